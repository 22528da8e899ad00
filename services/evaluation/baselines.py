"""Classical baselines that score the whole catalog: popularity, ItemKNN, text-only, a blend, and the helpers they
share (batched evaluation, tuning on validation). EASE is the ranker's item graph: :mod:`services.ranker.graph`.

Every scorer maps a batch of histories (0-based item indexes) to a (B, n) float32 score matrix; items a model
cannot score get -inf (never a hit, see :mod:`services.evaluation.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

from services.evaluation.metrics import KS, MetricSums
from services.evaluation.splits import Case

P = TypeVar("P")
BATCH = 512
KNN_NEIGHBOURS = (50, 100, 200, 400)  # ItemKNN's k, tried on validation


class Scorer(Protocol):
    def __call__(self, histories: Sequence[Sequence[int]]) -> Tensor: ...


def batches(cases: Sequence[Case], size: int = BATCH) -> Iterator[Sequence[Case]]:
    for start in range(0, len(cases), size):
        yield cases[start : start + size]


def evaluate(scorer: Scorer, cases: Sequence[Case], mask: bool, ks: Sequence[int] = KS) -> dict[str, float]:
    """Mean metrics of ``scorer`` over ``cases``; ``mask`` removes each user's history items from the ranking."""
    sums = MetricSums(ks)
    for chunk in batches(cases):
        histories = [c.history for c in chunk]
        sums.add(scorer(histories).float(), [c.targets for c in chunk], histories if mask else None)
    return sums.means()


def tune(
    candidates: Sequence[P], build: Callable[[P], Scorer], val: Sequence[Case], mask: bool, metric: str = "ndcg@10"
) -> tuple[P, dict[P, float]]:
    """The candidate whose scorer has the best validation ``metric``; ties go to the earlier candidate."""
    results = {c: evaluate(build(c), val, mask, ks=(10,))[metric] for c in candidates}
    best = max(candidates, key=lambda c: results[c])
    return best, results


def history_matrix(histories: Sequence[Sequence[int]], n_items: int) -> Tensor:
    """Sparse (B, n) indicator of each history's items."""
    pairs = sorted({(r, i) for r, h in enumerate(histories) for i in h})
    index = torch.tensor(pairs, dtype=torch.long).T if pairs else torch.zeros((2, 0), dtype=torch.long)
    ones = torch.ones(index.shape[1])
    return torch.sparse_coo_tensor(index, ones, (len(histories), n_items), check_invariants=False).coalesce()


@dataclass(frozen=True)
class ItemItemScorer:
    """score(u, j) = sum over the user's distinct history items i of W[i, j]."""

    weights: Tensor  # (n, n)
    unknown: Tensor | None = None  # (n,) bool: items the model cannot score

    def __call__(self, histories: Sequence[Sequence[int]]) -> Tensor:
        scores: Tensor = torch.sparse.mm(history_matrix(histories, self.weights.shape[0]), self.weights)
        if self.unknown is not None:
            scores[:, self.unknown] = -torch.inf
        return scores


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


def unseen_items(train: Sequence[Sequence[int]], n_items: int) -> Tensor:
    seen = torch.zeros(n_items, dtype=torch.bool)
    for seq in train:
        seen[list(seq)] = True
    return ~seen


def item_knn(g: np.ndarray, k: int, shrink: float = 0.0) -> Tensor:
    """Cosine item-item similarity from the Gram matrix, each item's ``k`` nearest neighbours kept (RecBole's
    ItemKNN)."""
    norms = np.sqrt(np.diag(g))
    sim = g / (np.outer(norms, norms) + shrink + 1e-12)
    np.fill_diagonal(sim, 0.0)
    weights = torch.from_numpy(sim.astype(np.float32))
    top = torch.topk(weights, min(k, weights.shape[1]), dim=1)
    return torch.zeros_like(weights).scatter_(1, top.indices, top.values)


def unit_rows(vectors: Tensor) -> Tensor:
    return torch.nn.functional.normalize(vectors.float(), dim=-1)


@dataclass(frozen=True)
class TextScorer:
    """Cosine of each item's text vector to the mean of the history's (unit) text vectors."""

    text: Tensor  # (n, d), unit rows

    def __call__(self, histories: Sequence[Sequence[int]]) -> Tensor:
        users = torch.stack([self.text[list(h)].mean(0) for h in histories])
        scores: Tensor = unit_rows(users) @ self.text.T
        return scores


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
