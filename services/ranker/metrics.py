"""Full-ranking metrics: Precision, Recall, F1, NDCG, MRR and Hit at several cut-offs.

Every item of the catalog is ranked. A target's rank is pessimistic: it counts the items that score higher and
the non-target items that tie with it, so a model that scores whole blocks of items equally (an ID-only model on
items it never saw) gains nothing from the tie. With masking, the user's history items score -inf before ranking;
a target that is itself in the history is then a miss (RecBole's full-sort convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

KS = (10, 20, 50)
METRICS = ("precision", "recall", "f1", "ndcg", "mrr", "hit")


def target_ranks(
    scores: Tensor, targets: Sequence[Sequence[int]], histories: Sequence[Sequence[int]] | None
) -> tuple[Tensor, Tensor]:
    """0-based pessimistic ranks (B, T) of the padded targets (inf where a target is padding or masked) and the
    number of targets per user (B,). ``scores`` (B, n) is changed in place when ``histories`` masks it."""
    batch = scores.shape[0]
    if histories is not None:
        rows = [r for r, h in enumerate(histories) for _ in h]
        cols = [i for h in histories for i in h]
        scores[rows, cols] = -math.inf
    width = max(len(t) for t in targets)
    padded = torch.zeros((batch, width), dtype=torch.long)
    valid = torch.zeros((batch, width), dtype=torch.bool)
    for r, t in enumerate(targets):
        padded[r, : len(t)] = torch.tensor(list(t), dtype=torch.long)
        valid[r, : len(t)] = True
    is_target = torch.zeros_like(scores, dtype=torch.bool)
    is_target.scatter_(1, padded, valid)
    target_scores = scores.gather(1, padded)  # (B, T)
    ranks = torch.empty((batch, width))
    for j in range(width):
        s = target_scores[:, j : j + 1]
        ranks[:, j] = ((scores > s) | ((scores == s) & ~is_target)).sum(1).float()
    missed = ~valid | ~torch.isfinite(target_scores)
    ranks[missed] = math.inf
    return ranks, valid.sum(1).float()


def per_user_metrics(ranks: Tensor, n_targets: Tensor, ks: Sequence[int] = KS) -> dict[str, Tensor]:
    """``{"<metric>@<k>": (B,) values}`` from :func:`target_ranks`."""
    out: dict[str, Tensor] = {}
    first = ranks.min(1).values
    discounts = 1.0 / torch.log2(torch.arange(max(ks), dtype=torch.float32) + 2)
    for k in ks:
        hit = ranks < k
        hits = hit.sum(1).float()
        precision = hits / k
        recall = hits / n_targets.clamp(min=1)
        denominator = precision + recall
        f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), 0.0)
        dcg = torch.where(hit, 1.0 / torch.log2(ranks.clamp(max=k) + 2), 0.0).sum(1)
        ideal = torch.cumsum(discounts[:k], 0)[(n_targets.clamp(min=1, max=k) - 1).long()]
        out[f"precision@{k}"] = precision
        out[f"recall@{k}"] = recall
        out[f"f1@{k}"] = f1
        out[f"ndcg@{k}"] = dcg / ideal
        out[f"mrr@{k}"] = torch.where(first < k, 1.0 / (first + 1), 0.0)
        out[f"hit@{k}"] = (hits > 0).float()
    return out


class MetricSums:
    """Accumulates per-user metrics over batches; :meth:`means` averages them over users."""

    def __init__(self, ks: Sequence[int] = KS) -> None:
        self.ks = tuple(ks)
        self.sums: dict[str, float] = {}
        self.users = 0

    def add(self, scores: Tensor, targets: Sequence[Sequence[int]], histories: Sequence[Sequence[int]] | None) -> None:
        ranks, n_targets = target_ranks(scores, targets, histories)
        for name, values in per_user_metrics(ranks, n_targets, self.ks).items():
            self.sums[name] = self.sums.get(name, 0.0) + float(values.sum())
        self.users += len(targets)

    def means(self) -> dict[str, float]:
        return {name: value / max(self.users, 1) for name, value in self.sums.items()}
