"""Catalog scorers and their validation: what training uses to choose the served model's settings.

Every scorer maps a batch of histories (0-based catalog indexes) to a (B, n) float32 score matrix; items a model
cannot score get -inf (never a hit, see :mod:`services.ranker.metrics`). The evaluation's baselines
(:mod:`services.evaluation.baselines`) are scored by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

from services.ranker.metrics import KS, MetricSums, per_user_metrics, target_ranks
from services.ranker.splits import Case

P = TypeVar("P")
BATCH = 512


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


def per_user(scorer: Scorer, cases: Sequence[Case], mask: bool, ks: Sequence[int] = KS) -> dict[str, np.ndarray]:
    """Every metric of each case, in order (``{"<metric>@<k>": (len(cases),) float64}``): what :func:`evaluate`
    averages, for intervals over users."""
    values: dict[str, list[np.ndarray]] = {}
    for chunk in batches(cases):
        histories = [c.history for c in chunk]
        scores = scorer(histories).float()
        ranks, n_targets = target_ranks(scores, [c.targets for c in chunk], histories if mask else None)
        for name, metric in per_user_metrics(ranks, n_targets, ks).items():
            values.setdefault(name, []).append(metric.double().numpy())
    return {name: np.concatenate(parts) for name, parts in values.items()}


@dataclass(frozen=True)
class Gain:
    """A model's mean gain over a simpler one on the same users, with a paired bootstrap interval."""

    mean: float
    low: float  # 5th percentile of the bootstrap means: the gain is beyond noise when this is above 0
    high: float  # 95th percentile
    users: int

    @property
    def beyond_noise(self) -> bool:
        return self.low > 0

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "users": self.users}


def paired_gain(model: np.ndarray, simpler: np.ndarray, seed: int, draws: int = 2000) -> Gain:
    """The gain of per-user values ``model`` over ``simpler`` (the same users in the same order): users are
    resampled with replacement ``draws`` times, so the interval keeps the pairing (one user's two scores move
    together)."""
    if len(model) != len(simpler):
        raise ValueError(f"{len(model)} and {len(simpler)} users: the gain is paired, user by user")
    gains = np.asarray(model, dtype=np.float64) - np.asarray(simpler, dtype=np.float64)
    if not len(gains):
        return Gain(0.0, 0.0, 0.0, 0)
    rng = np.random.default_rng(seed)
    means = np.array([gains[rng.integers(0, len(gains), len(gains))].mean() for _ in range(draws)])
    low, high = np.percentile(means, [5, 95])
    return Gain(float(gains.mean()), float(low), float(high), len(gains))


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


def unseen_items(train: Sequence[Sequence[int]], n_items: int) -> Tensor:
    seen = torch.zeros(n_items, dtype=torch.bool)
    for seq in train:
        seen[list(seq)] = True
    return ~seen


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
