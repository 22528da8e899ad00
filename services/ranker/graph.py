"""The ranker's item graph: EASE on the co-occurrence counts plus each item's nearest neighbours by text, fitted
in time and memory that grow with the catalog's interactions, not with its square.

EASE's closed form (Steck 2019, ``B = I - P diag(1/diag P)``, ``P = (X'X + lam I)^-1``) is, column by column, the
ridge regression of item j's column of X on every other item's. Inverting the n x n matrix costs n^3 time and n^2
memory (24 s at 8,000 items here; 80 GB at 100,000). :func:`neighbourhood_ease` solves the same regression with
item j's regressors restricted to its neighbourhood: its ``neighbours`` strongest co-occurring items and its
nearest items by text (SLIM with feature selection, Ning and Karypis 2012, with EASE's ridge in place of the elastic
net, so each column is one small linear solve). Where the neighbourhood holds every item it is exactly EASE. The
cost is n solves of size m (the neighbourhood) plus the sparse X'X, so it grows linearly with the catalog.

SANSA (Spisak et al. 2023, a sparse approximate inverse of EASE) was the other candidate; its ``sansa`` package
needs scikit-sparse, which has no wheel for this Python and builds against SuiteSparse's CHOLMOD, so it cannot
install from the Makefile alone on a fresh machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch
from torch import Tensor

from services.ranker.model import ItemGraph
from services.ranker.scoring import ItemItemScorer, tune, unseen_items
from services.ranker.splits import Case, Split

EASE_LAMBDAS = (25.0, 50.0, 100.0, 200.0, 400.0, 800.0)
TEXT_NEIGHBOURS = (5, 10, 20)
# Weight of the text neighbours in units of the mean item's interaction count (the mean of diag(X'X)), so one
# grid fits sparse and dense data sets alike.
TEXT_GRAPH_WEIGHTS = (0.1, 0.2, 0.4)
SOLVE_BATCH = 256  # items whose neighbourhood systems are solved together: 256 x m x m float64 at a time
TEXT_BLOCK = 2048  # items whose text similarities to the whole catalog are held at once


def interaction_matrix(train: Sequence[Sequence[int]], n_items: int) -> sp.csr_matrix:
    """Binary users x items matrix of the training sequences."""
    rows = [u for u, seq in enumerate(train) for _ in seq]
    cols = [i for seq in train for i in seq]
    matrix = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(train), n_items))
    matrix.data[:] = 1.0  # repeated interactions were summed; the matrix is binary
    return matrix


def gram(train: Sequence[Sequence[int]], n_items: int) -> sp.csr_matrix:
    """Sparse X'X (float64, sorted indices): item co-occurrence counts, each item's count on the diagonal."""
    x = interaction_matrix(train, n_items).astype(np.float64)
    g: sp.csr_matrix = (x.T @ x).tocsr()
    g.sort_indices()
    return g


def symmetric_inverse(a: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric matrix: by Cholesky in float32 when it is positive definite (X'X + lam I always
    is), else by LU in float64 (side information can make X'X + w N + lam I indefinite). At 4,385 items the
    Cholesky path took 0.56 s against 3.3 s for np.linalg.inv, relative difference 4e-7."""
    factor, info = scipy.linalg.lapack.spotrf(a.astype(np.float32), lower=False, clean=False)
    if info == 0:
        inverse, info = scipy.linalg.lapack.spotri(factor, lower=False)
    if info != 0:
        return np.linalg.inv(a)
    upper = np.triu(inverse)
    out: np.ndarray = upper + np.triu(upper, 1).T  # potri fills one triangle
    return out


def ease(g: np.ndarray, lam: float) -> Tensor:
    """Dense EASE (Steck 2019): B = I - P diag(1/diag(P)) with P = (X'X + lam I)^-1, zero diagonal. The exact
    form, for the EASE baseline and as the reference :func:`neighbourhood_ease` is measured against."""
    p = symmetric_inverse(g + lam * np.eye(g.shape[0]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return torch.from_numpy(b.astype(np.float32))


@dataclass(frozen=True)
class TextNeighbours:
    """Each item's nearest items by text cosine, best first: (n, k) indexes and their cosines."""

    indexes: np.ndarray  # (n, k) int64
    cosines: np.ndarray  # (n, k) float32

    def links(self, k: int) -> sp.csr_matrix:
        """(n, n) cosine of each item to its ``k`` nearest items (negatives dropped), made symmetric, zero
        diagonal: side information that can be added to the Gram matrix ``X'X`` before EASE."""
        n = len(self.indexes)
        k = min(k, self.indexes.shape[1])
        rows = np.repeat(np.arange(n), k)
        values = np.clip(self.cosines[:, :k].ravel(), 0.0, None)
        kept = sp.csr_matrix((values, (rows, self.indexes[:, :k].ravel())), shape=(n, n), dtype=np.float64)
        kept.eliminate_zeros()
        symmetric: sp.csr_matrix = kept.maximum(kept.T).tocsr()
        symmetric.sort_indices()
        return symmetric


def nearest_by_text(text: np.ndarray, k: int, block: int = TEXT_BLOCK) -> TextNeighbours:
    """The ``k`` nearest other items of every item by text cosine, a block of rows at a time (exact search: the
    whole (n, n) similarity matrix is never held)."""
    n = len(text)
    k = max(0, min(k, n - 1))
    unit = torch.nn.functional.normalize(torch.from_numpy(np.asarray(text, dtype=np.float32)), dim=1)
    indexes = np.zeros((n, k), dtype=np.int64)
    cosines = np.zeros((n, k), dtype=np.float32)
    if k == 0:
        return TextNeighbours(indexes, cosines)
    for start in range(0, n, block):
        similarity = unit[start : start + block] @ unit.T
        rows = torch.arange(similarity.shape[0])
        similarity[rows, rows + start] = -math.inf  # an item is not its own neighbour
        top = torch.topk(similarity, k, dim=1)
        indexes[start : start + block] = top.indices.numpy()
        cosines[start : start + block] = top.values.numpy()
    return TextNeighbours(indexes, cosines)


def text_neighbours(text: np.ndarray, k: int) -> sp.csr_matrix:
    """Sparse (n, n) symmetric links of each item to its ``k`` nearest items by text (see
    :meth:`TextNeighbours.links`)."""
    return nearest_by_text(text, k).links(k)


def neighbourhoods(g: sp.csr_matrix, text: TextNeighbours, neighbours: int) -> np.ndarray:
    """(n, m) each item's regressors, ascending: its ``neighbours`` largest co-occurrence counts and its nearest
    items by text, distinct, never the item itself; rows padded at the end with n (no item)."""
    n = g.shape[0]
    off = g.tocoo()
    keep = off.row != off.col
    rows, cols, counts = off.row[keep], off.col[keep], off.data[keep]
    order = np.lexsort((cols, -counts, rows))  # by item, strongest first, ties by index (repeatable)
    rows, cols = rows[order], cols[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    top = rank < neighbours
    co = np.full((n, neighbours), n, dtype=np.int64)
    co[rows[top], rank[top]] = cols[top]
    both = np.sort(np.concatenate([co, text.indexes], axis=1), axis=1)
    repeated = np.zeros_like(both, dtype=bool)
    repeated[:, 1:] = both[:, 1:] == both[:, :-1]
    both[repeated] = n
    both.sort(axis=1)
    width = max(1, int((both < n).sum(1).max()))
    out: np.ndarray = both[:, :width]
    return out


def _gather(matrix: sp.csr_matrix, keys: np.ndarray, wanted: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The entries of ``matrix`` at ``wanted`` keys (row * n + col; 0 where absent or not ``valid``), by binary
    search in the sorted ``keys`` of its entries. Queries in ascending runs search fastest (10-20x here)."""
    if not len(keys):
        return np.zeros(wanted.shape)
    found = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    out: np.ndarray = np.where((keys[found] == wanted) & valid, matrix.data[found], 0.0)
    return out


def _symmetric(triangle: np.ndarray, upper: tuple[np.ndarray, np.ndarray], width: int) -> np.ndarray:
    """(B, width, width) symmetric blocks from their (B, len(upper)) upper-triangle entries."""
    block = np.zeros((len(triangle), width, width))
    block[:, upper[0], upper[1]] = triangle
    block[:, upper[1], upper[0]] = triangle
    return block


def _entry_keys(matrix: sp.csr_matrix) -> np.ndarray:
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    keys: np.ndarray = rows * matrix.shape[1] + matrix.indices.astype(np.int64)
    return keys


def neighbourhood_ease(
    g: sp.csr_matrix,
    links: Mapping[int, sp.csr_matrix],
    hoods: np.ndarray,
    settings: Sequence[tuple[float, int, float]],
    batch: int = SOLVE_BATCH,
) -> list[sp.csr_matrix]:
    """EASE weights on ``X'X + w N_k`` (``N_k = links[k]``, the text links of ``k`` neighbours), item j's column
    regressed on its neighbourhood ``hoods[j]`` (from :func:`neighbourhoods`) only, for every (lambda, k, w) in
    ``settings`` (w already in count units; k or w 0: no text): one sparse (n, n) matrix per setting, source items
    as rows. Each block of the Gram matrix and of each text-link matrix is gathered once for all settings (the
    lookups took half of a 100k-item search when each text setting gathered its own)."""
    n = len(hoods)
    sizes = (hoods < n).sum(1)
    # Items with similar neighbourhood sizes are solved together, each batch at its own width: a few popular
    # items with full neighbourhoods do not pad every other item's system to their size.
    order = np.argsort(sizes, kind="stable")
    g_keys = _entry_keys(g)
    link_keys = {k: _entry_keys(links[k]) for _, k, w in settings if k and w}
    rows_out: list[np.ndarray] = []
    cols_out: list[np.ndarray] = []
    values_out: list[list[np.ndarray]] = [[] for _ in settings]
    for start in range(0, n, batch):
        items = order[start : start + batch]
        width = max(1, int(sizes[items].max()))
        hood = hoods[items, :width]  # (B, m), ascending within a row, padding last
        eye, upper = np.eye(width), np.triu_indices(width)
        valid = hood < n
        # Both matrices are symmetric: the upper triangle of each block is looked up and mirrored.
        pairs = hood[:, upper[0]] * n + hood[:, upper[1]]
        pair_valid = valid[:, upper[0]] & valid[:, upper[1]]
        target = hood * n + items[:, None]
        g_block = _symmetric(_gather(g, g_keys, pairs, pair_valid), upper, width)
        g_target = _gather(g, g_keys, target, valid)
        link_blocks = {
            k: (
                _symmetric(_gather(links[k], keys, pairs, pair_valid), upper, width),
                _gather(links[k], keys, target, valid),
            )
            for k, keys in link_keys.items()
        }
        rows_out.append(hood[valid])
        cols_out.append(np.broadcast_to(items[:, None], hood.shape)[valid])
        for n_setting, (lam, k, weight) in enumerate(settings):
            system, right = g_block + lam * eye, g_target
            if k in link_blocks and weight:
                l_block, l_target = link_blocks[k]
                system, right = system + weight * l_block, right + weight * l_target
            # Padding rows and columns are all zero but for lambda on the diagonal: their weight solves to 0.
            solution = np.linalg.solve(system, right[..., None])[..., 0]
            values_out[n_setting].append(solution[valid].astype(np.float32))
    rows, cols = np.concatenate(rows_out), np.concatenate(cols_out)
    return [sp.csr_matrix((np.concatenate(v), (rows, cols)), shape=(n, n)) for v in values_out]


@dataclass(frozen=True)
class GraphScorer:
    """score(u, j) = sum over the user's distinct history items i of W[i, j], for sparse weights W."""

    weights: sp.csr_matrix  # (n, n), source items as rows
    unknown: Tensor | None = None  # (n,) bool: items the model cannot score

    def __call__(self, histories: Sequence[Sequence[int]]) -> Tensor:
        rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        cols = np.fromiter((i for h in histories for i in h), dtype=np.int64, count=len(rows))
        shape = (len(histories), self.weights.shape[0])
        users = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
        users.data[:] = 1.0  # an item seen twice counts once
        scores = torch.from_numpy(np.asarray((users @ self.weights).toarray(), dtype=np.float32))
        if self.unknown is not None:
            scores[:, self.unknown] = -torch.inf
        return scores


@dataclass(frozen=True)
class GraphChoice:
    """What validation chose for the item graph; ``text_neighbours`` 0 is plain EASE."""

    ease_lambda: float
    text_neighbours: int
    text_weight: float  # in units of the mean item's interaction count
    val_ndcg: float  # the graph alone, validation NDCG@10

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fit_graph_weights(
    split: Split,
    text: np.ndarray,
    ease_lambda: float | None = None,
    *,
    mask: bool = True,
    neighbours: int | None = 128,
    max_users: int | None = None,
    seed: int = 0,
) -> tuple[sp.csr_matrix, GraphChoice]:
    """Sparse EASE item-to-item weights (n, n) on ``X'X + w * N``, where ``N`` links each item to its nearest items
    by text (the side-information form of EASE, as in Jeunen et al., "Closed-Form Models for Collaborative
    Filtering with Side-Information", 2020): an item with little history borrows co-occurrence from items that
    read alike. Each item's column is solved over its ``neighbours`` strongest co-occurring items and its nearest
    items by text (:func:`neighbourhood_ease`); ``neighbours`` None inverts the whole (n, n) matrix instead (the
    exact form, n^3: the reference the approximation is measured against in ``bench/graph_accuracy.py``).

    Picked on validation NDCG@10 of the graph alone (seen items masked, as served, unless ``mask`` is false; on a
    seeded sample of ``max_users`` validation users when given): lambda on plain EASE (unless ``ease_lambda`` is
    given), then the neighbours and their weight (plain EASE stays a candidate), then lambda again.
    """
    g = gram(split.train, split.n_items)
    unknown = unseen_items(split.train, split.n_items)
    unit_count = float(g.diagonal().mean()) or 1.0
    nearest = nearest_by_text(text, max(TEXT_NEIGHBOURS))
    hoods = neighbourhoods(g, nearest, neighbours) if neighbours is not None else np.zeros((0, 0), np.int64)
    links = {k: nearest.links(k) for k in TEXT_NEIGHBOURS}
    val: Sequence[Case] = split.val
    if max_users is not None and len(val) > max_users:
        val = random.Random(seed).sample(list(val), max_users)

    def dense(c: tuple[float, int, float]) -> Tensor:
        side = g.toarray() + c[2] * unit_count * links[c[1]].toarray() if c[1] else g.toarray()
        return ease(side, c[0])

    def best(candidates: Sequence[tuple[float, int, float]]) -> tuple[tuple[float, int, float], float, sp.csr_matrix]:
        if neighbours is None:  # the exact reference: each (n, n) inverse built, scored and dropped in turn
            choice, results = tune(candidates, lambda c: ItemItemScorer(dense(c), unknown), val, mask)
            return choice, results[choice], sp.csr_matrix(dense(choice).numpy())
        # One pass over the Gram matrix's blocks for every candidate, whose weights are all held (n x m each).
        settings = [(lam, k, w * unit_count) for lam, k, w in candidates]
        fitted = dict(zip(candidates, neighbourhood_ease(g, links, hoods, settings), strict=True))
        choice, results = tune(candidates, lambda c: GraphScorer(fitted[c], unknown), val, mask)
        return choice, results[choice], fitted[choice]

    if ease_lambda is None:
        (ease_lambda, _, _), _, _ = best([(lam, 0, 0.0) for lam in EASE_LAMBDAS])
    choice, val_ndcg, weights = best(
        [(ease_lambda, 0, 0.0)] + [(ease_lambda, k, w) for k in TEXT_NEIGHBOURS for w in TEXT_GRAPH_WEIGHTS]
    )
    if choice[1]:  # text neighbours won: lambda again, with them
        choice, val_ndcg, weights = best([(lam, choice[1], choice[2]) for lam in EASE_LAMBDAS])
    return weights, GraphChoice(*choice, val_ndcg)


def item_graph(
    weights: sp.csr_matrix, split: Split, vocabulary: Sequence[str], keep: int, text: np.ndarray | None = None
) -> ItemGraph:
    """The (n, n) catalog-indexed ``weights`` restricted to the model's vocabulary, as a pruned :class:`ItemGraph`,
    with the vocabulary's rows of the catalog-indexed ``text`` (for items unknown to it)."""
    position = {item_id: i for i, item_id in enumerate(split.item_ids)}
    rows = np.array([position[item_id] for item_id in vocabulary], dtype=np.int64)
    restricted = sp.csr_matrix(weights)[rows][:, rows]
    # Row and column 0 stand for items unknown to the model and stay empty.
    shifted = sp.block_diag((sp.csr_matrix((1, 1), dtype=np.float32), restricted), format="csr")
    return ItemGraph.from_sparse(shifted, keep, None if text is None else np.asarray(text)[rows])
