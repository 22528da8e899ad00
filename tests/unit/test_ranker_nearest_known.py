"""An unknown candidate's nearest known item (its graph column) is matched once per vector, then remembered."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.ranker.model import Fusion, ItemGraph, ModelConfig, RankerModel, RankerScorer


def _scorer() -> RankerScorer:
    """Five known items along the first five axes; the graph alone scores: i1 -> i3 (2.0), i1 -> i4 (0.5)."""
    weights = torch.zeros(6, 6)  # (source, target), row and column 0 = unknown
    weights[1, 3], weights[1, 4] = 2.0, 0.5
    graph = ItemGraph.from_dense(weights, keep=5, known_text=np.eye(5, 384, dtype=np.float32))
    model = RankerModel(ModelConfig(n_items=5, dim=8, layers=1, heads=1, max_len=10))
    return RankerScorer(
        model=model, item_ids=("i1", "i2", "i3", "i4", "i5"), graph=graph, fusion=Fusion(sequence=0.0, graph=1.0)
    )


def test_an_unknown_item_is_matched_once_and_again_when_its_vector_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    scorer = _scorer()
    calls: list[int] = []
    match = ItemGraph.columns

    def counted(graph: ItemGraph, index: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        calls.append(len(index))
        return match(graph, index, vectors)

    monkeypatch.setattr(ItemGraph, "columns", counted)
    axis = np.eye(5, 384, dtype=np.float32)
    history = axis[[0]]
    near_i3, near_i4 = axis[2] + 0.1 * axis[1], axis[3] + 0.1 * axis[1]
    first = scorer.score(["i1"], history, ["new", "other"], np.stack([near_i3, near_i4]))
    again = scorer.score(["i1"], history, ["new", "other"], np.stack([near_i3, near_i4]))
    np.testing.assert_allclose(first, [2.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(again, first)
    assert calls == [2]  # the second call took both from the cache
    moved = scorer.score(["i1"], history, ["new"], near_i4[None])  # re-upserted with other text
    np.testing.assert_allclose(moved, [0.5], atol=1e-6)
    assert calls == [2, 1]
