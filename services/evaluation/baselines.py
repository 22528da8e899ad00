"""Classical baselines that score the whole catalog: popularity, ItemKNN and a blend. EASE is the ranker's item
graph (:mod:`services.ranker.graph`); the scorers they share, batched evaluation and tuning on validation are the
ranker's too (:mod:`services.ranker.scoring`).

Every scorer maps a batch of histories (0-based item indexes) to a (B, n) float32 score matrix; items a model
cannot score get -inf (never a hit, see :mod:`services.ranker.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from services.ranker.scoring import Scorer

KNN_NEIGHBOURS = (50, 100, 200, 400)  # ItemKNN's k, tried on validation


@dataclass(frozen=True)
class PopularityScorer:
    counts: Tensor  # (n,)

    def __call__(self, histories: Sequence[Sequence[int]]) -> Tensor:
        return self.counts.expand(len(histories), -1).clone()


def popularity(train: Sequence[Sequence[int]], n_items: int) -> PopularityScorer:
    counts = torch.zeros(n_items)
    for seq in train:
        counts.index_add_(0, torch.tensor(list(seq), dtype=torch.long), torch.ones(len(seq)))
    return PopularityScorer(counts)


def item_knn(g: np.ndarray, k: int, shrink: float = 0.0) -> Tensor:
    """Cosine item-item similarity from the Gram matrix, each item's ``k`` nearest neighbours kept (RecBole's
    ItemKNN)."""
    norms = np.sqrt(np.diag(g))
    sim = g / (np.outer(norms, norms) + shrink + 1e-12)
    np.fill_diagonal(sim, 0.0)
    weights = torch.from_numpy(sim.astype(np.float32))
    top = torch.topk(weights, min(k, weights.shape[1]), dim=1)
    return torch.zeros_like(weights).scatter_(1, top.indices, top.values)


def zscore_rows(scores: Tensor) -> Tensor:
    """Per-user z-scores over the items a model can score (finite entries); the rest stay -inf."""
    finite = torch.isfinite(scores)
    values = torch.where(finite, scores, 0.0)
    count = finite.sum(1, keepdim=True).clamp(min=1)
    mean = values.sum(1, keepdim=True) / count
    var = (torch.where(finite, values - mean, 0.0) ** 2).sum(1, keepdim=True) / count
    return torch.where(finite, (values - mean) / var.sqrt().clamp(min=1e-9), -torch.inf)


@dataclass(frozen=True)
class BlendScorer:
    """(1 - w) z(collaborative) + w z(text); an item the collaborative model cannot score takes its text z-score
    alone, so a blend never loses reach that text-only has."""

    collaborative: Scorer
    text: Scorer
    weight: float

    def __call__(self, histories: Sequence[Sequence[int]]) -> Tensor:
        collaborative = zscore_rows(self.collaborative(histories))
        text = zscore_rows(self.text(histories))
        blended = (1 - self.weight) * torch.where(torch.isfinite(collaborative), collaborative, 0.0)
        return blended + self.weight * text
