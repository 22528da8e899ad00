"""Evaluation: metrics against hand-computed values, protocol splits without leakage, a short full run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.datasets.loaders import CatalogItem, Dataset, Interaction
from services.evaluation.baselines import item_knn
from services.evaluation.report import plot, table, write_json
from services.evaluation.runner import MODELS, run_evaluation
from services.evaluation.splits import cold_start, filter_dataset, held_out_validation, ratio_split
from services.ranker.graph import ease, gram
from services.ranker.metrics import MetricSums, per_user_metrics, target_ranks
from services.ranker.scoring import ItemItemScorer, evaluate
from services.ranker.splits import Split, loo_split
from services.ranker.training import TrainConfig

TINY = TrainConfig(dim=16, layers=1, heads=1, max_len=10, max_epochs=2, batch_size=64, seed=0, tune_users=200)


def _metrics(scores: list[list[float]], targets: list[list[int]], histories: list[list[int]] | None, k: int):
    sums = MetricSums(ks=(k,))
    sums.add(torch.tensor(scores), targets, histories)
    return sums.means()


def test_metrics_match_hand_computed_values() -> None:
    # Order: item 0 (0.9), 4, 2, 3, 1. Targets 2 and 1 sit at ranks 2 and 4 (0-based).
    m = _metrics([[0.9, 0.1, 0.5, 0.3, 0.7]], [[2, 1]], None, k=3)
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["recall@3"] == pytest.approx(1 / 2)
    assert m["f1@3"] == pytest.approx(0.4)  # 2 * (1/3) * (1/2) / (1/3 + 1/2)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert m["mrr@3"] == pytest.approx(1 / 3)
    assert m["hit@3"] == 1.0
    # Masking the seen item 0 lifts both targets one place.
    m = _metrics([[0.9, 0.1, 0.5, 0.3, 0.7]], [[2, 1]], [[0]], k=3)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["mrr@3"] == pytest.approx(1 / 2)
    assert m["recall@3"] == pytest.approx(1 / 2)


def test_ties_are_pessimistic_and_a_masked_target_is_a_miss() -> None:
    # Target 1 ties with items 0 and 2: rank 2, a miss at 2, a hit at 3.
    assert _metrics([[0.5, 0.5, 0.5, 0.2, 0.1]], [[1]], None, k=2)["hit@2"] == 0.0
    assert _metrics([[0.5, 0.5, 0.5, 0.2, 0.1]], [[1]], None, k=3)["ndcg@3"] == pytest.approx(0.5)
    # Two tied targets do not push each other down.
    ranks, _ = target_ranks(torch.tensor([[0.5, 0.5, 0.1]]), [[0, 1]], None)
    assert ranks.tolist() == [[0.0, 0.0]]
    # A target the model cannot score (-inf) or the user already saw never counts.
    assert _metrics([[0.9, -math.inf, 0.1]], [[1]], None, k=3)["hit@3"] == 0.0
    assert _metrics([[0.9, 0.8, 0.1]], [[1]], [[1]], k=3)["hit@3"] == 0.0


def test_per_user_metrics_average_over_users() -> None:
    ranks = torch.tensor([[0.0], [math.inf]])
    values = per_user_metrics(ranks, torch.tensor([1.0, 1.0]), ks=(10,))
    assert values["hit@10"].tolist() == [1.0, 0.0]
    assert values["ndcg@10"].tolist() == [1.0, 0.0]


def _dataset(n_users: int = 40, n_items: int = 30, length: int = 10, seed: int = 0) -> Dataset:
    """Users walk through consecutive items (no repeats), so next items are predictable and never repeat."""
    rng = np.random.default_rng(seed)
    items = tuple(CatalogItem(item_id=f"i{n}", title=f"item {n}") for n in range(n_items))
    interactions = []
    for u in range(n_users):
        start = int(rng.integers(0, n_items - length))
        for t in range(length):
            interactions.append(Interaction(f"u{u:02d}", f"i{start + t}", float(t), rating=float(1 + (u + t) % 5)))
    return Dataset("synthetic", items, tuple(interactions))


def test_loo_split_never_trains_on_its_targets() -> None:
    split = loo_split(_dataset())
    for train, val, test in zip(split.train, split.val, split.test, strict=True):
        assert val.targets[0] not in train and test.targets[0] not in train
        assert val.history == train
        assert test.history == (*train, val.targets[0])


def test_ratio_split_is_8_1_1_seeded_and_disjoint() -> None:
    dataset = _dataset()
    split = ratio_split(dataset, seed=1)
    assert split == ratio_split(dataset, seed=1)
    assert split != ratio_split(dataset, seed=2)
    for train, val, test in zip(split.train, split.val, split.test, strict=True):
        assert (len(train), len(val.targets), len(test.targets)) == (8, 1, 1)
        assert not set(train) & set(val.targets) and not set(train) & set(test.targets)
        assert not set(val.targets) & set(test.targets)
        assert list(train) == sorted(train)  # consecutive items: time order is index order
        assert set(test.history) == set(train) | set(val.targets)


def test_cold_start_holds_items_out_of_training() -> None:
    split = cold_start(loo_split(_dataset()), seed=0)
    assert split.protocol == "loo-cold" and len(split.cold_items) == 3
    assert not any(set(seq) & split.cold_items for seq in split.train)
    assert split.test and all(set(c.targets) <= split.cold_items for c in split.test)
    assert not any(set(c.targets) & split.cold_items for c in split.val)


def test_held_out_validation_items_are_new_to_the_tuning_fit_and_never_the_tests() -> None:
    cold = cold_start(loo_split(_dataset()), seed=0)
    held_out = held_out_validation(cold, seed=0)
    items = held_out.split.cold_items - cold.cold_items
    assert len(items) == len(cold.cold_items) and held_out.split.cold_items > cold.cold_items
    assert not any(set(seq) & held_out.split.cold_items for seq in held_out.split.train)
    assert held_out.cases and all(set(c.targets) <= items for c in held_out.cases)
    assert not any(set(c.targets) & held_out.split.cold_items for c in held_out.split.val)
    assert held_out.split.test == cold.test  # the test is the cold split's, untouched


def test_filter_dataset_keeps_a_k_core_of_good_ratings() -> None:
    dataset = _dataset()
    filtered = filter_dataset(dataset, min_rating=3, core=3)
    assert all(i.rating is not None and i.rating >= 3 for i in filtered.interactions)
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    for it in filtered.interactions:
        users[it.user_id] = users.get(it.user_id, 0) + 1
        items[it.item_id] = items.get(it.item_id, 0) + 1
    assert min(users.values()) >= 3 and min(items.values()) >= 3
    assert {i.item_id for i in filtered.items} == set(items)


def test_item_models_learn_consecutive_items() -> None:
    split = loo_split(_dataset())
    g = gram(split.train, split.n_items).toarray()
    for weights in (ease(g, 10.0), item_knn(g, 5)):
        assert evaluate(ItemItemScorer(weights), split.test, mask=True, ks=(10,))["hit@10"] > 0.5
    # EASE's self-similarity is zero by construction.
    assert torch.all(torch.diagonal(ease(g, 10.0)) == 0)


def test_short_train_and_eval_run(tmp_path: Path) -> None:
    dataset = _dataset()
    split = loo_split(dataset)
    text = np.random.default_rng(0).normal(size=(len(dataset.items), 384)).astype(np.float32)
    adapted_for: list[Split] = []

    def adapter(current: Split) -> tuple[np.ndarray, dict[str, Any]]:
        # Stands in for the fine-tuning: other vectors for the same items, fitted on the split it is given.
        adapted_for.append(current)
        return text + np.random.default_rng(1).normal(scale=0.5, size=text.shape).astype(np.float32), {"fake": 1}

    result = run_evaluation(
        split, text, masks=(True, False), seed=0, data_hash="abc", train_config=TINY, progress=False, adapter=adapter
    )
    # The cold-start split adapts again: its held-out items must never have been in the encoder's training pairs.
    assert [s.protocol for s in adapted_for] == ["loo", "loo-cold"]
    for mask in ("masked", "unmasked"):
        choice = result.choices[f"loo/ours/encoder/{mask}"]
        assert choice["adapted"] == (choice["gain"]["low"] > 0)
    assert result.choices["loo-cold/text-only-adapted/tuning"] == {"fake": 1}
    protocols = {row.protocol for row in result.rows}
    assert protocols == {"loo", "loo-cold"}
    for protocol in protocols:
        for mask in (True, False):
            got = {r.model for r in result.rows if r.protocol == protocol and r.masked == mask}
            assert got == set(MODELS)
    assert all(0.0 <= row.value <= 1.0 for row in result.rows)
    # ID-only models cannot reach cold items; ours scores them from text.
    cold = {r.model: r.value for r in result.rows if r.protocol == "loo-cold" and r.masked and r.metric == "hit@50"}
    assert cold["ease"] == cold["itemknn"] == cold["id-only"] == cold["popularity"] == 0.0
    printed = table(result)
    assert "| ours |" in printed and "loo, seen items masked" in printed
    write_json(result, tmp_path / "rows.json", {"seed": 0})
    document = json.loads((tmp_path / "rows.json").read_text())
    assert {"model", "protocol", "masked", "metric", "value", "seed", "data_hash"} == set(document["rows"][0])
    plot(result, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
