"""One evaluation run: every model on the same split, tuned on validation, scored on test by full ranking.

Models: popularity, ItemKNN, EASE, the same and ALS from maintained libraries (:mod:`services.evaluation.library`:
cornac, implicit), an ID-only sequential model (our transformer with the text path off, i.e. SASRec-
style), text-only, a naive blend of the best collaborative model with text-only, and ours (the served ranker:
transformer + item graph (EASE with text neighbours) + text prior). Every tunable choice (ItemKNN's k, EASE's
lambda, the blend's weight, our fusion weights) is picked on validation NDCG@10 under the same masking as the row it
is reported in. With cold start, the whole set of models is fitted again on the split without the held-out items.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from services.evaluation.baselines import KNN_NEIGHBOURS, BlendScorer, item_knn, popularity
from services.evaluation.library import LIBRARY_MODELS
from services.evaluation.splits import cold_start
from services.ranker.graph import EASE_LAMBDAS, ease, fit_graph_weights, gram
from services.ranker.metrics import KS
from services.ranker.scoring import ItemItemScorer, Scorer, TextScorer, evaluate, tune, unit_rows, unseen_items
from services.ranker.splits import Split
from services.ranker.training import (
    CatalogScorer,
    TrainConfig,
    fit_ranker,
    fit_sequence_model,
    graph_neighbours,
    replace_fusion,
    served_graph,
    tune_fusion,
)

# The library rows (services.evaluation.library) check our EASE and ItemKNN; they are not candidates of the blend.
MODELS = ("popularity", "itemknn", "ease", *(m.name for m in LIBRARY_MODELS), "id-only", "text-only", "blend", "ours")
NO_TEXT = ("popularity", "itemknn", "ease", "id-only")
BLEND_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class Row:
    model: str
    protocol: str
    masked: bool
    metric: str
    value: float
    seed: int
    data_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "protocol": self.protocol,
            "masked": self.masked,
            "metric": self.metric,
            "value": round(self.value, 6),
            "seed": self.seed,
            "data_hash": self.data_hash,
        }


@dataclass
class RunResult:
    rows: list[Row] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # "<protocol>/<model>" -> fit, tuning and scoring
    choices: dict[str, Any] = field(default_factory=dict)  # "<protocol>/<model>/<mask>" -> what validation chose
    users: dict[str, int] = field(default_factory=dict)  # protocol -> test users


@dataclass(frozen=True)
class _Masked:
    """An ID-based scorer with the items it never saw in training set to -inf (it cannot reach them)."""

    scorer: Scorer
    unknown: Tensor

    def __call__(self, histories: Sequence[Sequence[int]]) -> Tensor:
        scores = self.scorer(histories)
        scores[:, self.unknown] = -torch.inf
        return scores


def run_evaluation(
    split: Split,
    text: np.ndarray,
    *,
    masks: Sequence[bool],
    seed: int,
    data_hash: str,
    train_config: TrainConfig,
    with_cold_start: bool = True,
    progress: bool = True,
) -> RunResult:
    result = RunResult()
    splits = [split, cold_start(split, seed)] if with_cold_start else [split]
    for current in splits:
        _run_split(current, text, masks, seed, data_hash, train_config, result, progress)
    return result


def _run_split(
    split: Split,
    text: np.ndarray,
    masks: Sequence[bool],
    seed: int,
    data_hash: str,
    train_config: TrainConfig,
    result: RunResult,
    progress: bool,
) -> None:
    protocol = split.protocol
    result.users[protocol] = len(split.test)
    bar = tqdm(total=len(MODELS), desc=f"models ({protocol})", unit="model", disable=not progress)
    unknown = unseen_items(split.train, split.n_items)
    chosen: dict[tuple[str, bool], Scorer] = {}
    val_ndcg: dict[tuple[str, bool], float] = {}

    def report(model: str, scorers: Callable[[bool], Scorer], started: float) -> None:
        for mask in masks:
            scorer = scorers(mask)
            chosen[model, mask] = scorer
            val_ndcg[model, mask] = evaluate(scorer, split.val, mask, ks=(10,))["ndcg@10"]
            for metric, value in evaluate(scorer, split.test, mask, ks=KS).items():
                result.rows.append(Row(model, protocol, mask, metric, value, seed, data_hash))
        result.seconds[f"{protocol}/{model}"] = time.perf_counter() - started
        bar.update(1)

    started = time.perf_counter()
    pop = _Masked(popularity(split.train, split.n_items), unknown)
    report("popularity", lambda mask: pop, started)

    started = time.perf_counter()
    g = gram(split.train, split.n_items).toarray()  # the baselines are the exact, dense forms
    knn: dict[bool, Scorer] = {}
    for mask in masks:
        k, _ = tune(KNN_NEIGHBOURS, lambda k: ItemItemScorer(item_knn(g, k), unknown), split.val, mask)
        result.choices[f"{protocol}/itemknn/{_mask_name(mask)}"] = {"k": k}
        knn[mask] = ItemItemScorer(item_knn(g, k), unknown)
    report("itemknn", lambda mask: knn[mask], started)

    started = time.perf_counter()
    fitted: dict[float, Tensor] = {}

    def ease_weights(lam: float) -> Tensor:
        if lam not in fitted:
            fitted[lam] = ease(g, lam)
        return fitted[lam]

    lambdas: dict[bool, float] = {}
    for mask in (True, *[m for m in masks if not m]):
        lambdas[mask], _ = tune(EASE_LAMBDAS, lambda lam: ItemItemScorer(ease_weights(lam), unknown), split.val, mask)
        result.choices[f"{protocol}/ease/{_mask_name(mask)}"] = {"lambda": lambdas[mask]}
    report("ease", lambda mask: ItemItemScorer(ease_weights(lambdas[mask]), unknown), started)

    for library_model in LIBRARY_MODELS:
        started = time.perf_counter()
        library_scorers: dict[bool, Scorer] = {}
        for mask in masks:
            library_scorers[mask], choice = library_model.tuned(split, mask, seed)
            result.choices[f"{protocol}/{library_model.name}/{_mask_name(mask)}"] = choice
        report(library_model.name, library_scorers.__getitem__, started)

    started = time.perf_counter()
    id_only = fit_sequence_model(split, text, train_config, use_text=False, progress=progress)
    id_unknown = torch.ones(split.n_items, dtype=torch.bool)
    id_unknown[[n for n in range(split.n_items) if n not in split.cold_items]] = False
    id_scorer = _Masked(CatalogScorer(id_only.scorer(train_config.device), split.item_ids, text), id_unknown)
    result.choices[f"{protocol}/id-only/epochs"] = {"epochs": id_only.epochs, "best_epoch": id_only.best_epoch}
    report("id-only", lambda mask: id_scorer, started)

    started = time.perf_counter()
    text_only = TextScorer(unit_rows(torch.from_numpy(text)))
    report("text-only", lambda mask: text_only, started)

    started = time.perf_counter()
    blends: dict[bool, BlendScorer] = {}
    for mask in masks:
        best = max(NO_TEXT, key=lambda m: val_ndcg[m, mask])
        blends[mask] = _blend(chosen[best, mask], text_only, split, mask)
        result.choices[f"{protocol}/blend/{_mask_name(mask)}"] = {
            "collaborative": best,
            "text_weight": blends[mask].weight,
        }
    report("blend", lambda mask: blends[mask], started)

    started = time.perf_counter()
    ours = fit_ranker(split, text, train_config, progress=progress, ease_lambda=lambdas[True])
    scorer = ours.scorer(train_config.device)
    ours_by_mask: dict[bool, Scorer] = {}
    for mask in masks:
        ranker = scorer
        fusion, graph_choice = ours.fusion, ours.graph_choice
        if not mask:
            # Like the baselines' lambdas, the graph and the fusion are tuned again under the row's masking.
            weights, graph_choice = fit_graph_weights(
                split,
                text,
                lambdas[False],
                mask=False,
                neighbours=graph_neighbours(train_config, split.n_items),
                max_users=train_config.eval_users,
                seed=train_config.seed,
            )
            ranker = replace_fusion(
                scorer, ours.fusion, served_graph(weights, split, ours.item_ids, train_config, text)
            )
            fusion = tune_fusion(
                ranker, split, text, mask=False, max_users=train_config.tune_users, seed=train_config.seed
            ).fusion
        result.choices[f"{protocol}/ours/{_mask_name(mask)}"] = fusion.to_dict()
        if graph_choice is not None:
            result.choices[f"{protocol}/ours/graph/{_mask_name(mask)}"] = graph_choice.to_dict()
        ours_by_mask[mask] = CatalogScorer(replace_fusion(ranker, fusion), split.item_ids, text)
    result.choices[f"{protocol}/ours/epochs"] = {"epochs": ours.epochs, "best_epoch": ours.best_epoch}
    report("ours", lambda mask: ours_by_mask[mask], started)
    bar.close()


def _blend(collaborative: Scorer, text: Scorer, split: Split, mask: bool) -> BlendScorer:
    weight, _ = tune(BLEND_WEIGHTS, lambda w: BlendScorer(collaborative, text, w), split.val, mask)
    return BlendScorer(collaborative, text, weight)


def _mask_name(mask: bool) -> str:
    return "masked" if mask else "unmasked"
