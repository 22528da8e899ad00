"""Baselines from maintained libraries, so the ratios this project reports do not rest on our own EASE and ItemKNN
alone: cornac's EASE, implicit's cosine ItemKNN and implicit's ALS.

Each library fits on the same training sequences and scores histories with the weights it learned; the scores go
through the same full-ranking metric code as every other row. Items the training data never shows get -inf, as in
our own ID-based baselines. Each model's setting is tuned on validation NDCG@10 under the row's masking.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from services.evaluation.baselines import KNN_NEIGHBOURS
from services.ranker.graph import EASE_LAMBDAS
from services.ranker.scoring import Scorer, tune
from services.ranker.splits import Split

# ALS (Hu, Koren and Volinsky 2008) on binary data: factors and L2 weight; alpha scales the confidence of a positive.
ALS_SETTINGS = tuple((f, r, a) for f in (64, 128, 256) for r in (0.01, 0.1) for a in (1.0, 10.0))
ALS_ITERATIONS = 15


def history_rows(histories: Sequence[Sequence[int]], n_items: int) -> sp.csr_matrix:
    """Binary (B, n) CSR of the histories' distinct items."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.fromiter((i for h in histories for i in h), dtype=np.int64, count=len(rows))
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(histories), n_items))
    matrix.data[:] = 1.0
    return matrix


def train_matrix(split: Split) -> sp.csr_matrix:
    return history_rows(split.train, split.n_items)


def _unknown(train: sp.csr_matrix) -> Tensor:
    return torch.from_numpy(np.asarray(train.sum(0)).ravel() == 0)


@dataclass(frozen=True)
class ItemWeightsScorer:
    """A library's item-to-item weights applied as the library applies them: history row @ weights."""

    weights: sp.csr_matrix | np.ndarray  # (n, n)
    unknown: Tensor  # (n,) bool

    def __call__(self, histories: Sequence[Sequence[int]]) -> Tensor:
        product = history_rows(histories, self.weights.shape[0]) @ self.weights
        dense = product.toarray() if sp.issparse(product) else np.asarray(product)
        scores = torch.from_numpy(dense.astype(np.float32))
        scores[:, self.unknown] = -torch.inf
        return scores


@dataclass(frozen=True)
class FactorScorer:
    """implicit's ALS: each history's user factors solved against the fitted item factors (its
    ``recalculate_user``), scored by the dot product, as its ``recommend`` does."""

    model: Any  # implicit.cpu.als.AlternatingLeastSquares
    unknown: Tensor

    def __call__(self, histories: Sequence[Sequence[int]]) -> Tensor:
        rows = history_rows(histories, self.model.item_factors.shape[0])
        users = self.model.recalculate_user(np.arange(len(histories)), rows)
        scores = torch.from_numpy(np.asarray(users @ self.model.item_factors.T, dtype=np.float32))
        scores[:, self.unknown] = -torch.inf
        return scores


def cornac_ease(split: Split, lam: float) -> ItemWeightsScorer:
    """cornac's EASE (``posB=False``: Steck's form keeps negative weights, as ours does), fitted on the training
    sequences; its item order mapped back to the catalog's."""
    import cornac

    train = train_matrix(split)
    users, items = train.nonzero()
    triples = [(str(u), str(i), 1.0) for u, i in zip(users.tolist(), items.tolist(), strict=True)]
    dataset = cornac.data.Dataset.from_uir(triples, seed=0)
    model = cornac.models.EASE(lamb=lam, posB=False, verbose=False, seed=0).fit(dataset)
    catalog = np.array([int(raw) for raw in dataset.item_ids], dtype=np.int64)  # cornac index -> catalog index
    weights = np.zeros((split.n_items, split.n_items), dtype=np.float32)
    weights[np.ix_(catalog, catalog)] = model.B
    return ItemWeightsScorer(weights, _unknown(train))


def implicit_itemknn(split: Split, k: int) -> ItemWeightsScorer:
    """implicit's ``CosineRecommender``: cosine item-item similarity, each item's ``k`` nearest kept."""
    from implicit.nearest_neighbours import CosineRecommender

    train = train_matrix(split)
    model = CosineRecommender(K=k)
    with warnings.catch_warnings():
        # Its own normalisation hands its k-NN a COO matrix and it warns about that; our input is CSR.
        warnings.filterwarnings("ignore", message="Method expects CSR input", module="implicit")
        model.fit(train, show_progress=False)
    return ItemWeightsScorer(model.similarity.tocsr(), _unknown(train))


def implicit_als(split: Split, setting: tuple[int, float, float], seed: int) -> FactorScorer:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    factors, regularization, alpha = setting
    train = train_matrix(split)
    model = AlternatingLeastSquares(
        factors=factors,
        regularization=regularization,
        alpha=alpha,
        iterations=ALS_ITERATIONS,
        random_state=seed,
    )
    with threadpool_limits(1, "blas"):  # implicit's own threads run the solves; BLAS threads under them slow it
        model.fit(train, show_progress=False)
    return FactorScorer(model, _unknown(train))


@dataclass(frozen=True)
class LibraryModel:
    """A row of ``recsys eval``: the library's model, the settings tried on validation and how to fit one."""

    name: str
    settings: Sequence[Any]
    fit: Callable[[Split, Any, int], Scorer]
    setting_name: str

    def tuned(self, split: Split, mask: bool, seed: int) -> tuple[Scorer, dict[str, Any]]:
        """The scorer with the best validation NDCG@10 under ``mask``, and what was chosen."""
        # Each candidate is fitted, scored and dropped; the chosen one is fitted again (one model held at a time).
        choice, _ = tune(self.settings, lambda setting: self.fit(split, setting, seed), split.val, mask)
        return self.fit(split, choice, seed), {self.setting_name: choice}


LIBRARY_MODELS = (
    LibraryModel("cornac-ease", EASE_LAMBDAS, lambda split, lam, seed: cornac_ease(split, lam), "lambda"),
    LibraryModel("implicit-itemknn", KNN_NEIGHBOURS, lambda split, k, seed: implicit_itemknn(split, k), "k"),
    LibraryModel("implicit-als", ALS_SETTINGS, implicit_als, "factors, regularization, alpha"),
)
