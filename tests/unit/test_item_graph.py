"""The scalable item graph: exact where a neighbourhood holds every item, close where it does not, and the sparse
path into the served graph equal to the dense one."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from services.ranker.graph import (
    GraphScorer,
    ease,
    fit_graph_weights,
    gram,
    nearest_by_text,
    neighbourhood_ease,
    neighbourhoods,
    symmetric_inverse,
)
from services.ranker.model import ItemGraph
from services.ranker.scoring import evaluate, unseen_items
from services.ranker.splits import Case, Split


def _clustered(n_items: int = 120, n_users: int = 400, seed: int = 0) -> tuple[Split, np.ndarray]:
    """Users buy within one of a few item clusters, popular items more often; texts carry the cluster."""
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, 6, n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.7
    train, val, test = [], [], []
    for user in range(n_users):
        members = np.flatnonzero(clusters == rng.integers(0, 6))
        weights = popularity[members] / popularity[members].sum()
        seq = [int(i) for i in rng.choice(members, size=min(len(members), 6), p=weights, replace=False)]
        train.append(tuple(seq[:-2]))
        val.append(Case(f"u{user}", tuple(seq[:-2]), (seq[-2],)))
        test.append(Case(f"u{user}", tuple(seq[:-1]), (seq[-1],)))
    centres = rng.normal(size=(6, 16))
    text = (centres[clusters] + 0.5 * rng.normal(size=(n_items, 16))).astype(np.float32)
    split = Split("loo", tuple(f"i{n}" for n in range(n_items)), tuple(train), tuple(val), tuple(test))
    return split, text


def test_a_neighbourhood_that_holds_every_item_is_exactly_ease() -> None:
    split, text = _clustered(n_items=40)
    g = gram(split.train, split.n_items)
    nearest = nearest_by_text(text, 5)
    every_other = np.array([[i for i in range(40) if i != j] for j in range(40)])
    plain, with_text = neighbourhood_ease(g, {5: nearest.links(5)}, every_other, [(50.0, 0, 0.0), (50.0, 5, 3.0)])
    np.testing.assert_allclose(plain.toarray(), ease(g.toarray(), 50.0).numpy(), atol=1e-5)
    side = g.toarray() + 3.0 * nearest.links(5).toarray()
    np.testing.assert_allclose(with_text.toarray(), ease(side, 50.0).numpy(), atol=1e-5)


def test_a_neighbourhood_is_the_strongest_co_occurring_items_and_the_nearest_by_text() -> None:
    split, text = _clustered(n_items=40)
    g = gram(split.train, split.n_items)
    nearest = nearest_by_text(text, 3)
    hoods = neighbourhoods(g, nearest, neighbours=4)
    counts = g.toarray()
    np.fill_diagonal(counts, -1)
    for item, hood in enumerate(hoods):
        members = set(hood[hood < 40].tolist())
        assert item not in members and set(nearest.indexes[item].tolist()) <= members
        strongest = np.sort(counts[item])[::-1][:4]
        assert all(counts[item, m] >= strongest[-1] for m in members - set(nearest.indexes[item].tolist()))
        assert len(members - set(nearest.indexes[item].tolist())) <= 4
        assert np.all(np.diff(hood) >= 0)  # ascending, padding (40) last


def test_small_neighbourhoods_stay_close_to_dense_ease() -> None:
    """On clustered data the strongest co-occurring items carry the regression: 16 of 119 neighbours keep NDCG."""
    split, text = _clustered()
    unknown = unseen_items(split.train, split.n_items)
    dense, _ = fit_graph_weights(split, text, neighbours=None)
    small, _ = fit_graph_weights(split, text, neighbours=16)
    assert small.getnnz(axis=0).max() <= 16 + 20  # co-occurring plus text neighbours per item
    exact = evaluate(GraphScorer(dense, unknown), split.test, mask=True, ks=(10,))["ndcg@10"]
    approximate = evaluate(GraphScorer(small, unknown), split.test, mask=True, ks=(10,))["ndcg@10"]
    assert approximate >= 0.95 * exact


def test_text_neighbours_are_found_in_blocks_as_in_one_pass() -> None:
    text = np.random.default_rng(3).normal(size=(50, 8)).astype(np.float32)
    whole, blocked = nearest_by_text(text, 4, block=64), nearest_by_text(text, 4, block=7)
    np.testing.assert_array_equal(whole.indexes, blocked.indexes)
    assert not np.any(whole.indexes == np.arange(50)[:, None])


def test_the_sparse_path_to_the_served_graph_equals_the_dense_one() -> None:
    weights = torch.zeros(6, 6)
    weights[1, 3], weights[1, 4], weights[2, 4], weights[2, 5], weights[2, 1], weights[3, 2] = 2, 0.5, 1, -3, 0.2, 1
    for keep in (1, 2, 5):
        dense = ItemGraph.from_dense(weights, keep)
        sparse = ItemGraph.from_sparse(sp.csr_matrix(weights.numpy()), keep)
        assert torch.equal(dense.transposed.to_dense(), sparse.transposed.to_dense())


def test_symmetric_inverse_takes_cholesky_when_it_can_and_lu_when_it_must() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((200, 40))
    definite = x @ x.T + 2 * np.eye(200)  # X'X + lam I
    indefinite = definite.copy()
    indefinite[0, 1] = indefinite[1, 0] = 1e3  # large side information can make it so
    for a, tolerance in ((definite, 1e-4), (indefinite, 1e-9)):
        inverse = symmetric_inverse(a)
        assert np.allclose(inverse, inverse.T)
        assert np.abs(inverse @ a - np.eye(200)).max() < tolerance
