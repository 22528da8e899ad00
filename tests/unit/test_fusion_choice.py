"""The fusion choice: never worse on validation than the best single term, and no term whose gain is noise."""

from __future__ import annotations

import numpy as np
import pytest

from services.datasets.loaders import CatalogItem, Dataset, Interaction
from services.evaluation.splits import cold_start, held_out_validation
from services.ranker.model import Fusion
from services.ranker.scoring import evaluate, paired_gain
from services.ranker.splits import loo_split
from services.ranker.training import (
    FUSION_TERMS,
    CatalogScorer,
    TrainConfig,
    fit_ranker,
    replace_fusion,
    train_ranker,
    tune_fusion,
)


def _walks(n_users: int = 60, n_items: int = 40, length: int = 10, seed: int = 0) -> Dataset:
    """Users walk through consecutive items: the item graph predicts the next item, random text cannot."""
    rng = np.random.default_rng(seed)
    items = tuple(CatalogItem(item_id=f"i{n}", title=f"item {n}") for n in range(n_items))
    interactions = [
        Interaction(f"u{u:02d}", f"i{start + t}", float(t))
        for u in range(n_users)
        for start in [int(rng.integers(0, n_items - length))]
        for t in range(length)
    ]
    return Dataset("walks", items, tuple(interactions))


def test_a_paired_gain_is_beyond_noise_only_when_the_users_agree() -> None:
    rng = np.random.default_rng(0)
    simpler = rng.uniform(size=500)
    assert not paired_gain(simpler, simpler, seed=0).beyond_noise
    noise = paired_gain(simpler + rng.normal(scale=0.3, size=500), simpler, seed=0)
    assert noise.low < noise.mean < noise.high and not noise.beyond_noise
    better = paired_gain(simpler + 0.05 + rng.normal(scale=0.05, size=500), simpler, seed=0)
    assert better.beyond_noise and better.mean == pytest.approx(0.05, abs=0.01) and better.users == 500
    with pytest.raises(ValueError, match="paired"):
        paired_gain(simpler, simpler[:10], seed=0)


def test_a_term_that_does_not_pay_on_validation_gets_no_weight() -> None:
    dataset = _walks()
    ids = [item.item_id for item in dataset.items]
    text = np.random.default_rng(1).normal(size=(len(ids), 16)).astype(np.float32)
    config = TrainConfig(dim=16, layers=1, heads=1, max_len=10, max_epochs=2, batch_size=64, seed=0, tune_users=200)
    result = train_ranker(dataset, (ids, text), config, progress=False)
    choice = result.fusion_choice
    assert choice is not None and set(choice.terms) <= set(FUSION_TERMS) and choice.terms
    assert "text" not in choice.terms and result.fusion.text == 0.0  # random vectors say nothing of the next item
    assert "graph" in choice.terms and result.fusion.graph > 0
    # A dropped term's gain was within noise; the model kept is validation's best up to that noise.
    assert all(not gain.beyond_noise for gain in choice.dropped.values())
    assert choice.val_ndcg >= choice.val_ndcg_all_terms - max((g.high for g in choice.dropped.values()), default=0.0)
    for term in FUSION_TERMS:
        assert (getattr(result.fusion, term) > 0) == (term in choice.terms)
    assert len(result.val_ndcg_per_user) == len(dataset.user_ids)
    assert result.metrics["val_ndcg@10"] == pytest.approx(float(result.val_ndcg_per_user.mean()))


def test_a_blend_chosen_on_held_out_items_reaches_items_the_model_never_trained_on() -> None:
    # Text that reads alike along the walk: the next item is the last one's neighbour in text.
    dataset = _walks(n_users=120)
    angles = np.arange(len(dataset.items))[:, None] * np.array([0.05, 0.11, 0.23])[None, :]
    text = np.concatenate([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    cold = cold_start(loo_split(dataset), seed=0)
    held_out = held_out_validation(cold, seed=0)
    config = TrainConfig(dim=16, layers=1, heads=1, max_len=10, max_epochs=2, batch_size=64, seed=0, tune_users=200)
    without = fit_ranker(held_out.split, text, config, progress=False)
    choice = tune_fusion(
        without.scorer("cpu"), held_out.split, text, mask=True, max_users=200, seed=0, new_item_cases=held_out.cases
    )
    served = fit_ranker(cold, text, config, progress=False)  # the held-out items back in training

    def test_ndcg(fusion: Fusion) -> float:
        scorer = CatalogScorer(replace_fusion(served.scorer("cpu"), fusion), cold.item_ids, text)
        return evaluate(scorer, cold.test, mask=True, ks=(10,))["ndcg@10"]

    # Chosen on warm targets, the fusion leans on the item graph, which knows nothing of a new item.
    assert choice.fusion.text > 0
    assert test_ndcg(choice.fusion) > 0.9 > test_ndcg(served.fusion)


def test_unmasked_the_fusion_learns_that_users_rarely_come_back_to_an_item() -> None:
    # Users never return to an item on a walk, and the item graph links each item to the one before it as
    # strongly as to the one after: unmasked, the history crowds the top until novelty pushes it down.
    dataset = _walks()
    ids = [item.item_id for item in dataset.items]
    text = np.random.default_rng(1).normal(size=(len(ids), 16)).astype(np.float32)
    config = TrainConfig(dim=16, layers=1, heads=1, max_len=10, max_epochs=2, batch_size=64, seed=0, tune_users=200)
    split = loo_split(dataset)
    fitted = fit_ranker(split, text, config, progress=False)
    scorer = fitted.scorer("cpu")
    unmasked = tune_fusion(scorer, split, text, mask=False, max_users=200, seed=0)
    masked = tune_fusion(scorer, split, text, mask=True, max_users=200, seed=0)
    assert "novelty" in unmasked.terms and unmasked.fusion.novelty > 0
    assert "novelty" not in masked.terms and masked.fusion.novelty == 0.0
    # The served fusion keeps its masked weights and learns novelty on unmasked validation, for callers that
    # keep seen items; where they are excluded it scores as before.
    served = fitted.fusion_choice
    assert served is not None and served.novelty_gain is not None and served.novelty_gain.beyond_noise
    assert fitted.fusion.novelty > 0 and "novelty" in served.terms
    before = replace_fusion(scorer, Fusion(**{**fitted.fusion.to_dict(), "novelty": 0.0}))
    masked_ndcg = [
        evaluate(CatalogScorer(s, split.item_ids, text), split.test, True)["ndcg@10"] for s in (scorer, before)
    ]
    assert masked_ndcg[0] == masked_ndcg[1]

    def test_ndcg(fusion: Fusion) -> float:
        return evaluate(CatalogScorer(replace_fusion(scorer, fusion), split.item_ids, text), split.test, False)[
            "ndcg@10"
        ]

    without = Fusion(**{**unmasked.fusion.to_dict(), "novelty": 0.0})
    assert test_ndcg(unmasked.fusion) > test_ndcg(without)
