"""Train the ranker: the sequential transformer, the item graph and the fusion weights, all picked on validation.

Split (by time, per user, :func:`services.ranker.splits.loo_split`): the last item is the test target, the one
before the validation target, the rest is training data. Every training prefix predicts its next item with a full
softmax over the known catalog items. Early stopping watches validation NDCG@10 (full ranking, seen items masked).
Then the item graph is fitted on the same training data: EASE on the co-occurrence counts plus each item's nearest
neighbours by text (:func:`fit_graph_weights`; neighbours, their weight and lambda picked on validation), pruned,
and the fusion weights of sequence, graph and text are tuned on validation by coordinate ascent. The test split is
only ever scored, never used to choose anything.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from services.datasets.loaders import Dataset
from services.ranker import distributed
from services.ranker.graph import GraphChoice, fit_graph_weights, item_graph
from services.ranker.metrics import per_user_metrics, target_ranks
from services.ranker.model import Fusion, ItemGraph, ModelConfig, RankerModel, RankerScorer
from services.ranker.scoring import Gain, TextScorer, evaluate, paired_gain, per_user, unit_rows
from services.ranker.splits import Case, Split, loo_split

T = TypeVar("T")
ItemVectors = Mapping[str, np.ndarray] | tuple[Sequence[str], np.ndarray]

# Fusion weights are tried in units of each component's spread on validation, so one grid fits every data set.
FUSION_GRID = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
TEXT_DECAYS = (1.0, 0.5, 0.25, 0.1)
FUSION_TERMS = ("sequence", "graph", "text", "novelty")
GRAPH_DECAYS = (1.0, 0.7, 0.4)
FUSION_SCORES_BYTES = 2 * 1024**3


def graph_neighbours(config: TrainConfig, n_items: int) -> int | None:
    """The neighbourhood size the item graph is solved with; None (the exact inverse) for small catalogs."""
    return None if n_items <= config.graph_exact_up_to else config.graph_neighbours


def sample_cases(cases: Sequence[T], limit: int, seed: int) -> Sequence[T]:
    """``cases`` itself when there are at most ``limit``, else a seeded sample of ``limit`` of them."""
    return cases if len(cases) <= limit else random.Random(seed).sample(list(cases), limit)


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    # Measured on Amazon-Scientific (validation NDCG@10): dropout 0.5 beat 0.2 (0.0743 vs 0.0706); dim 128 and
    # id_dropout 0.1/0.5 changed little. id_dropout 0.3 keeps the text path strong for items added later.
    dropout: float = 0.5
    id_dropout: float = 0.3
    lr: float = 3e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    max_epochs: int = 40
    patience: int = 3  # epochs without a better validation NDCG before stopping
    k: int = 10
    seed: int = 0
    device: str = "cpu"
    max_seconds: float | None = None  # wall-clock budget; runs that hit it are no longer exactly repeatable
    graph_keep: int = 256  # graph weights kept per item: the checkpoint stays sparse as the catalog grows
    # Up to this many items the graph keeps every weight (at most 4M entries): small, dense catalogs such as
    # MovieLens lose accuracy to pruning.
    graph_dense_up_to: int = 2000
    tune_users: int = 4000  # validation users the fusion weights are tuned on (a seeded sample)
    # Up to this many items the graph is exact EASE (one n x n inverse: seconds, 200 MB at 5,000 items). Beyond,
    # each item's EASE column is solved over its ``graph_neighbours`` strongest co-occurring items and its text
    # neighbours: cost linear in the catalog. bench/graph_accuracy.py, same settings, test NDCG@10 against the
    # exact graph: Amazon-Scientific 1.000x with 64; ml-100k (dense) 0.964x with 64, 0.974x with 128.
    graph_exact_up_to: int = 5000
    graph_neighbours: int = 128
    # Validation (early stopping, the graph's search) and the reported metrics run on a seeded sample of this many
    # users where there are more: full ranking costs users x catalog.
    eval_users: int = 10000
    # Beyond this many items a training step's softmax runs over the batch's own targets and history items plus
    # ``sampled_negatives`` items drawn uniformly (mixed negative sampling, Yang et al. 2020), not the catalog.
    full_softmax_up_to: int = 20000
    sampled_negatives: int = 8192

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SequenceFit:
    """A trained transformer: best-validation weights and the vocabulary its ID rows belong to."""

    state_dict: dict[str, Tensor]  # on CPU
    model_config: ModelConfig
    item_ids: tuple[str, ...]  # ID-embedding row i + 1 belongs to item_ids[i]
    epochs: int
    best_epoch: int

    def scorer(self, device: str = "cpu", graph: ItemGraph | None = None, fusion: Fusion | None = None) -> RankerScorer:
        model = RankerModel(self.model_config)
        model.load_state_dict(self.state_dict)
        return RankerScorer(model=model, item_ids=self.item_ids, device=device, graph=graph, fusion=fusion or Fusion())


@dataclass
class TrainResult:
    state_dict: dict[str, Tensor]  # best validation epoch, on CPU
    model_config: ModelConfig
    item_ids: tuple[str, ...]  # vocabulary: ID-embedding row i + 1 belongs to item_ids[i]
    config: TrainConfig
    metrics: dict[str, float]
    epochs: int
    best_epoch: int
    seconds: float
    dataset_name: str
    dataset_hash: str
    n_users: int
    graph: ItemGraph | None = None
    fusion: Fusion = field(default_factory=Fusion)
    graph_choice: GraphChoice | None = None
    fusion_choice: FusionChoice | None = None
    # Validation NDCG@10 of each sampled validation user (the cases of ``val_ndcg@10``), for paired comparisons.
    val_ndcg_per_user: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def scorer(self, device: str = "cpu") -> RankerScorer:
        model = RankerModel(self.model_config)
        model.load_state_dict(self.state_dict)
        return RankerScorer(model=model, item_ids=self.item_ids, device=device, graph=self.graph, fusion=self.fusion)


def train_ranker(
    dataset: Dataset, item_vectors: ItemVectors, config: TrainConfig, progress: bool = True
) -> TrainResult:
    """Train on ``dataset``'s leave-one-out split with the items' text vectors; return the served model and its
    validation and test metrics (seen items masked)."""
    item_ids = tuple(item.item_id for item in dataset.items)
    text = vector_table(item_ids, item_vectors)
    split = loo_split(dataset)
    if not split.val:
        raise ValueError("no user has 3 or more interactions: nothing to validate on")
    return fit_ranker(
        split,
        text,
        config,
        progress=progress,
        dataset_name=dataset.name,
        dataset_hash=dataset.content_hash(),
        n_users=len(dataset.user_ids),
    )


def fit_ranker(
    split: Split,
    text: np.ndarray,
    config: TrainConfig,
    *,
    progress: bool = True,
    dataset_name: str = "",
    dataset_hash: str = "",
    n_users: int = 0,
    ease_lambda: float | None = None,
) -> TrainResult:
    """The served ranker for ``split``: transformer, item graph and fusion weights, all chosen on masked
    validation. ``ease_lambda``, when the caller has already tuned plain EASE, is where the graph's search starts."""
    started = time.perf_counter()
    sequence = fit_sequence_model(split, text, config, use_text=True, progress=progress)
    graph_weights, graph_choice = fit_graph_weights(
        split,
        text,
        ease_lambda,
        neighbours=graph_neighbours(config, split.n_items),
        max_users=config.eval_users,
        seed=config.seed,
    )
    graph = served_graph(graph_weights, split, sequence.item_ids, config, text)
    base = sequence.scorer(config.device, graph=graph)
    fusion_choice = tune_fusion(base, split, text, mask=True, max_users=config.tune_users, seed=config.seed)
    novelty, novelty_gain = tune_novelty(
        replace_fusion(base, fusion_choice.fusion), split, text, max_users=config.tune_users, seed=config.seed
    )
    fusion_choice = replace(
        fusion_choice,
        fusion=replace(fusion_choice.fusion, novelty=novelty),
        terms=fusion_choice.terms + (("novelty",) if novelty else ()),  # novelty is last in FUSION_TERMS
        novelty_gain=novelty_gain,
    )
    scorer = replace_fusion(base, fusion_choice.fusion)

    metrics: dict[str, float] = {}
    k = config.k
    full = catalog_scorer(scorer, split, text)
    val = per_user(full, sample_cases(split.val, config.eval_users, config.seed), mask=True, ks=(k,))
    for name, values in val.items():
        metrics[f"val_{name}"] = float(values.mean())
    test = sample_cases(split.test, config.eval_users, config.seed)
    for name, value in evaluate(full, test, mask=True, ks=(k,)).items():
        metrics[f"test_{name}"] = value
    text_only = TextScorer(unit_rows(torch.from_numpy(text)))
    for name, value in evaluate(text_only, test, mask=True, ks=(k,)).items():
        metrics[f"text_only_{name}"] = value
    return TrainResult(
        state_dict=sequence.state_dict,
        model_config=sequence.model_config,
        item_ids=sequence.item_ids,
        config=config,
        metrics=metrics,
        epochs=sequence.epochs,
        best_epoch=sequence.best_epoch,
        seconds=time.perf_counter() - started,
        dataset_name=dataset_name,
        dataset_hash=dataset_hash,
        n_users=n_users,
        graph=graph,
        fusion=fusion_choice.fusion,
        graph_choice=graph_choice,
        fusion_choice=fusion_choice,
        val_ndcg_per_user=val[f"ndcg@{k}"],
    )


def replace_fusion(scorer: RankerScorer, fusion: Fusion, graph: ItemGraph | None = None) -> RankerScorer:
    """``scorer`` with other fusion weights (and, when given, another item graph)."""
    return RankerScorer(
        model=scorer.model, item_ids=scorer.item_ids, device=scorer.device, graph=graph or scorer.graph, fusion=fusion
    )


@dataclass(frozen=True)
class CatalogScorer:
    """Adapts a :class:`RankerScorer` to the evaluation's catalog-index interface."""

    scorer: RankerScorer
    item_ids: tuple[str, ...]
    text: np.ndarray

    def __call__(self, histories: Sequence[Sequence[int]]) -> Tensor:
        return self.scorer.score_catalog(histories, self.item_ids, self.text)


def catalog_scorer(scorer: RankerScorer, split: Split, text: np.ndarray) -> CatalogScorer:
    return CatalogScorer(scorer, split.item_ids, text)


def served_graph(
    weights: sp.csr_matrix, split: Split, vocabulary: Sequence[str], config: TrainConfig, text: np.ndarray
) -> ItemGraph:
    """The graph a checkpoint keeps: every weight for small catalogs, the strongest ``graph_keep`` per item
    beyond ``graph_dense_up_to``."""
    keep = len(vocabulary) if len(vocabulary) <= config.graph_dense_up_to else config.graph_keep
    return item_graph(weights, split, vocabulary, keep, text)


@dataclass(frozen=True)
class FusionChoice:
    """The served fusion and how validation got there: every term tuned together, then terms whose gain is within
    noise dropped (``dropped``: each term's gain over the model without it, on the tuning users)."""

    fusion: Fusion
    terms: tuple[str, ...]  # the terms with weight, in FUSION_TERMS order
    val_ndcg: float  # the served fusion, validation NDCG@10 on the tuning users
    val_ndcg_all_terms: float  # every term, tuned together
    dropped: dict[str, Gain] = field(default_factory=dict)
    novelty_gain: Gain | None = None  # the served novelty's gain on unmasked validation (see tune_novelty)

    def to_dict(self) -> dict[str, Any]:
        novelty = {} if self.novelty_gain is None else {"novelty_gain": self.novelty_gain.to_dict()}
        return {
            **self.fusion.to_dict(),
            "terms": list(self.terms),
            "val_ndcg": self.val_ndcg,
            "val_ndcg_all_terms": self.val_ndcg_all_terms,
            "dropped": {term: gain.to_dict() for term, gain in self.dropped.items()},
            **novelty,
        }


def tune_fusion(
    scorer: RankerScorer,
    split: Split,
    text: np.ndarray,
    *,
    mask: bool,
    max_users: int,
    seed: int,
    new_item_cases: Sequence[Case] = (),
) -> FusionChoice:
    """Fusion weights chosen on validation NDCG@10, never worse there than the best single term, and no more terms
    than validation can tell apart from noise.

    Each decay first (its term alone), then coordinate ascent over the weights (two rounds, in units of each
    term's spread on validation) from the best term alone. A term left at weight 0 is dropped; then, while more
    than one term is left, the model without its least useful term (re-tuned) is served instead when the gain
    over it is within noise (its paired-bootstrap 5th percentile over the tuning users is not above 0): a gain
    validation cannot tell from chance does not carry to test. Unmasked, where seen items stay in the ranking, a
    fourth term (novelty: a penalty on the history's items) learns how rarely users come back to an item.

    ``new_item_cases``, when given, replace ``split.val``: validation cases whose targets are items held out of the
    model's training (new to it), tuned with every item ranked."""
    # Every term's scores (each decay's too) of every sampled user over the whole catalog are held at once.
    held = 1 + len(GRAPH_DECAYS) + len(TEXT_DECAYS) + (0 if mask else 1)
    chunks = _tuning_chunks(new_item_cases or split.val, held, split.n_items, max_users, seed)
    # On warm validation, tuned as at training time, over the items the model knows: items new to it are never
    # its targets, and since they take the graph score of their nearest known item, ranking them there only taught
    # the weights to keep new items down (ml-100k cold: graph weight 41 -> 2.7).
    unknown = torch.tensor([] if new_item_cases else _new_items(scorer, split), dtype=torch.long)

    def component(fusion: Fusion) -> list[Tensor]:
        single = CatalogScorer(replace_fusion(scorer, fusion), split.item_ids, text)
        return [single([c.history for c in chunk]) for chunk in chunks]

    def users_ndcg(parts: Sequence[tuple[float, list[Tensor]]]) -> np.ndarray:
        return np.concatenate(
            [
                _ndcg_at_10(
                    sum((w * p[n] for w, p in parts if w), torch.zeros_like(parts[0][1][n])), chunk, mask, unknown
                )
                for n, chunk in enumerate(chunks)
            ]
        )

    parts = {"sequence": component(Fusion(sequence=1.0))}
    graph_decay = 1.0
    if scorer.graph is not None:
        graphs = {d: component(Fusion(sequence=0.0, graph=1.0, graph_decay=d)) for d in GRAPH_DECAYS}
        graph_decay = max(GRAPH_DECAYS, key=lambda d: float(users_ndcg([(1.0, graphs[d])]).mean()))
        parts["graph"] = graphs[graph_decay]
    texts = {d: component(Fusion(sequence=0.0, text=1.0, text_decay=d)) for d in TEXT_DECAYS}
    text_decay = max(TEXT_DECAYS, key=lambda d: float(users_ndcg([(1.0, texts[d])]).mean()))
    parts["text"] = texts[text_decay]
    if not mask:
        # Masked, seen items are out of every ranking and the term would change nothing.
        parts["novelty"] = component(Fusion(sequence=0.0, novelty=1.0))
    scale = {name: 1.0 / _spread(part) for name, part in parts.items()}
    memo: dict[tuple[tuple[str, float], ...], np.ndarray] = {}

    def user_values(weights: Mapping[str, float]) -> np.ndarray:
        key = tuple(sorted((name, w) for name, w in weights.items() if w))
        if key not in memo:
            memo[key] = users_ndcg([(w * scale[name], parts[name]) for name, w in key])
        return memo[key]

    def score(weights: Mapping[str, float]) -> float:
        return float(user_values(weights).mean())

    def fit(terms: Sequence[str]) -> dict[str, float]:
        # The best term alone is the anchor (weight 1); the others are weighed against it.
        anchor = max(terms, key=lambda t: score({t: 1.0}))
        weights = {t: 1.0 if t == anchor else 0.0 for t in terms}
        best = score(weights)
        for _ in range(2):
            for name in [t for t in terms if t != anchor]:
                for value in FUSION_GRID:
                    trial = {**weights, name: value}
                    result = score(trial)
                    if result > best:
                        best, weights = result, trial
        return {t: w for t, w in weights.items() if w}

    weights = fit(list(parts))
    all_terms = score(weights)
    dropped: dict[str, Gain] = {}
    while len(weights) > 1:
        simpler = {term: fit([t for t in weights if t != term]) for term in weights}
        term = max(simpler, key=lambda t: score(simpler[t]))
        gain = paired_gain(user_values(weights), user_values(simpler[term]), seed)
        if gain.beyond_noise:
            break
        dropped[term] = gain
        weights = simpler[term]
    fusion = Fusion(
        sequence=weights.get("sequence", 0.0) * scale["sequence"],
        graph=weights.get("graph", 0.0) * scale.get("graph", 0.0),
        text=weights.get("text", 0.0) * scale["text"],
        text_decay=text_decay,
        graph_decay=graph_decay,
        novelty=weights.get("novelty", 0.0) * scale.get("novelty", 0.0),
    )
    terms = tuple(t for t in FUSION_TERMS if t in weights)
    return FusionChoice(fusion, terms, score(weights), all_terms, dropped)


def tune_novelty(
    scorer: RankerScorer, split: Split, text: np.ndarray, *, max_users: int, seed: int
) -> tuple[float, Gain]:
    """The served fusion's novelty (what an item the user already has loses), chosen on unmasked validation NDCG@10
    with the scorer's other weights kept, and 0 unless its gain is beyond noise. Where seen items are excluded
    (Recommend's default, the masked rows) it changes nothing; where a caller keeps them (``exclude_seen`` false)
    it ranks them by how often users come back to an item."""
    chunks = _tuning_chunks(split.val, 2, split.n_items, max_users, seed)
    unknown = torch.tensor(_new_items(scorer, split), dtype=torch.long)
    served = [CatalogScorer(scorer, split.item_ids, text)([c.history for c in chunk]) for chunk in chunks]
    seen = []
    for chunk, scores in zip(chunks, served, strict=True):
        part = torch.zeros_like(scores)
        for row, case in enumerate(chunk):
            part[row, list(case.history)] = -1.0
        seen.append(part)

    unit = _spread(served) / _spread(seen)  # a weight of 1 moves seen items by the served score's spread

    def values(novelty: float) -> np.ndarray:
        return np.concatenate(
            [
                _ndcg_at_10(s + novelty * p, chunk, False, unknown)
                for s, p, chunk in zip(served, seen, chunks, strict=True)
            ]
        )

    without = values(0.0)
    tried = {w * unit: values(w * unit) for w in FUSION_GRID if w}
    best = max(tried, key=lambda novelty: float(tried[novelty].mean()))
    gain = paired_gain(tried[best], without, seed)
    return (best if gain.beyond_noise else 0.0), gain


def _tuning_chunks(cases: Sequence[Case], held: int, n_items: int, max_users: int, seed: int) -> list[Sequence[Case]]:
    """A seeded sample of ``cases`` in chunks of 512. ``held`` catalog-wide score sets of every sampled user are
    held at once, so the sample shrinks as the catalog grows and they stay within FUSION_SCORES_BYTES."""
    sample = sample_cases(cases, min(max_users, max(1, FUSION_SCORES_BYTES // (4 * held * n_items))), seed)
    return [sample[start : start + 512] for start in range(0, len(sample), 512)]


def _spread(parts: list[Tensor]) -> float:
    """The standard deviation of a term's scores over the tuning users: the unit its weights are tried in."""
    return float(torch.cat([p.flatten() for p in parts]).std()) or 1.0


def _new_items(scorer: RankerScorer, split: Split) -> list[int]:
    """Positions of the split's items the scorer was not trained on."""
    known = set(scorer.item_ids)
    return [i for i, item_id in enumerate(split.item_ids) if item_id not in known]


def _ndcg_at_10(scores: Tensor, chunk: Sequence[Case], mask: bool, unknown: Tensor) -> np.ndarray:
    """Per-user NDCG@10 of ``chunk``'s targets under (B, n) catalog scores, ``unknown`` items never ranked;
    ``scores`` is changed in place."""
    if len(unknown):
        scores[:, unknown] = -math.inf
    histories = [c.history for c in chunk] if mask else None
    ranks, n_targets = target_ranks(scores, [c.targets for c in chunk], histories)
    out: np.ndarray = per_user_metrics(ranks, n_targets, (10,))["ndcg@10"].double().numpy()
    return out


def fit_sequence_model(
    split: Split, text: np.ndarray, config: TrainConfig, *, use_text: bool, progress: bool = True
) -> SequenceFit:
    """Train the causal transformer on ``split.train`` (text + ID, or ID only) with early stopping on masked
    validation NDCG@k. Items held out for cold start are not in the vocabulary, as if they did not exist yet."""
    _seed_everything(config.seed)
    device = torch.device(config.device)
    known = [i for i in range(split.n_items) if i not in split.cold_items]
    position = np.zeros(split.n_items, dtype=np.int64)
    position[known] = np.arange(1, len(known) + 1)
    vocabulary = tuple(split.item_ids[i] for i in known)
    table = torch.from_numpy(np.concatenate([np.zeros((1, text.shape[1]), np.float32), text[known]])).to(device)

    model_config = ModelConfig(
        n_items=len(known),
        text_dim=text.shape[1],
        dim=config.dim,
        layers=config.layers,
        heads=config.heads,
        max_len=config.max_len,
        dropout=config.dropout,
        id_dropout=config.id_dropout if use_text else 0.0,
        use_text=use_text,
    )
    model = RankerModel(model_config).to(device)
    distributed.broadcast_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    inputs, targets = _windows([position[list(seq)].tolist() for seq in split.train], config.max_len)
    lengths = (targets > 0).sum(1)
    all_ids = torch.arange(1, len(known) + 1, device=device)
    sampled = len(known) > config.full_softmax_up_to
    val_cases = sample_cases(split.val, config.eval_users, config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()

    best_ndcg, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    epochs = 0
    desc = "train ranker" if use_text else "train ID-only"
    bar = tqdm(range(1, config.max_epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        epochs = epoch
        model.train()
        total = 0.0
        for global_batch in _length_buckets(lengths, config.batch_size, generator):
            # Under torchrun each process takes its share of the same global batch (the generator is seeded alike).
            batch = distributed.my_part(global_batch)
            # Most sequences are short: cut the batch to its longest row and score real positions only.
            width = int(lengths[batch].max())
            x, y = inputs[batch, :width].to(device), targets[batch, :width].to(device)
            if sampled:
                x, y, ids = _sampled_vocabulary(x, y, len(known), config.sampled_negatives, generator)
            else:
                ids = all_ids
            # Pad index 0 maps to an all-zero row, so padded history positions stay empty.
            items = torch.cat([table.new_zeros((1, config.dim)), model.item_repr(table[ids], ids)])
            states = model.encode(items[x])
            real = y > 0
            logits = states[real] @ items[1:].T
            loss = nn.functional.cross_entropy(logits, y[real] - 1)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            distributed.average_gradients(model.parameters())
            optimizer.step()
            total += loss.item() * len(batch)
        scorer = RankerScorer(model=model, item_ids=vocabulary, device=config.device)
        val = evaluate(CatalogScorer(scorer, split.item_ids, text), val_cases, mask=True, ks=(config.k,))
        ndcg = val[f"ndcg@{config.k}"]
        bar.set_postfix(loss=f"{total / max(len(inputs), 1):.3f}", val_ndcg=f"{ndcg:.4f}")
        if ndcg > best_ndcg:
            best_ndcg, best_epoch, best_state = ndcg, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            break
        if config.max_seconds is not None and time.perf_counter() - started > config.max_seconds:
            break
    bar.close()
    state = {name: t.detach().cpu().clone() for name, t in best_state.items()}
    return SequenceFit(state, model_config, vocabulary, epochs, best_epoch)


def _sampled_vocabulary(
    x: Tensor, y: Tensor, n_items: int, negatives: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """The batch's histories and targets re-indexed into a small vocabulary: the items they hold plus
    ``negatives`` drawn uniformly from the catalog (1-based, 0 stays padding), and that vocabulary's item ids."""
    drawn = torch.randint(1, n_items + 1, (negatives,), generator=generator).to(x.device)
    ids = torch.unique(torch.cat([x[x > 0], y[y > 0], drawn]))
    position = torch.zeros(n_items + 1, dtype=torch.long, device=x.device)
    position[ids] = torch.arange(1, len(ids) + 1, device=x.device)
    return position[x], position[y], ids


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def vector_table(item_ids: Sequence[str], item_vectors: ItemVectors) -> np.ndarray:
    """(n, dim) float32, row i the text vector of item_ids[i]."""
    if isinstance(item_vectors, tuple):
        ids, matrix = item_vectors
        if len(ids) != len(matrix):
            raise ValueError(f"{len(ids)} item ids but {len(matrix)} vectors")
        lookup: Mapping[str, np.ndarray] = {item_id: matrix[i] for i, item_id in enumerate(ids)}
    else:
        lookup = item_vectors
    missing = [item_id for item_id in item_ids if item_id not in lookup]
    if missing:
        raise ValueError(f"{len(missing)} catalog items have no text vector, e.g. {missing[:5]}")
    return np.stack([np.asarray(lookup[item_id], dtype=np.float32) for item_id in item_ids])


def _windows(train: Sequence[Sequence[int]], max_len: int) -> tuple[Tensor, Tensor]:
    """Right-padded (inputs, next-item targets) of up to max_len steps; each target appears in one window."""
    rows: list[tuple[Sequence[int], Sequence[int]]] = []
    for seq in train:
        end = len(seq)
        while end >= 2:
            start = max(0, end - max_len - 1)
            rows.append((seq[start : end - 1], seq[start + 1 : end]))
            end = start + 1
    inputs = torch.zeros((len(rows), max_len), dtype=torch.long)
    targets = torch.zeros((len(rows), max_len), dtype=torch.long)
    for r, (x, y) in enumerate(rows):
        inputs[r, : len(x)] = torch.tensor(x)
        targets[r, : len(y)] = torch.tensor(y)
    return inputs, targets


def _length_buckets(lengths: Tensor, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffled batches of rows of similar length, so few padded positions are computed."""
    order = torch.randperm(len(lengths), generator=generator)
    pool = batch_size * 32
    batches: list[Tensor] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(torch.split(chunk, batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
