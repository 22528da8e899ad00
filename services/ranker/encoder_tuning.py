"""Fine-tuning the text encoder on the catalog's interactions: items people take together should read alike.

Two stages: the top transformer layers (below), then a linear head over the pooled vectors (:func:`train_head`),
trained to make the mean of a history's vectors point at its next item among the whole catalog's.

The objective is contrastive with in-batch negatives (InfoNCE, both directions): each pair is an item of a user's
training history and an item that follows it within ``window`` positions (the next item, and the items
co-interacted with shortly after), and every other item of the batch is a negative (the same item elsewhere in
the batch is not). Pairs come from the training split only; validation and test targets are never in them.

What it costs: only the top ``trained_layers`` transformer layers are trained (mean pooling has no weights). The
catalog is a fixed set of items, so each item's hidden states after the frozen lower layers are computed once
and kept (bfloat16); a step runs the top layers alone, on the batch's distinct items, through the packed
forward the embedding service serves with (:mod:`services.embedding.unpadded`), texts cut to ``max_tokens``.

Early stopping watches validation NDCG@10 of the text alone (each item's cosine to the mean of the history's
vectors, seen items masked): a whole-model fit per epoch (the ranker's transformer, item graph and fusion) costs
minutes here, the text score a second. Whether the adapted encoder is served at all is decided on the whole model
by the caller (:func:`services.ranker.training.choose_encoder`).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from services.embedding.encoder import cpu_has_native_bf16
from services.embedding.unpadded import Packing, UnpaddedBert, run_layers
from services.embedding.versions import write_model_folder
from services.ranker.scoring import TextScorer, evaluate
from services.ranker.splits import Case, Split
from services.ranker.training import sample_cases


@dataclass(frozen=True)
class TuningConfig:
    """Chosen on Amazon-Scientific's validation NDCG@10 of text alone (2026-12-07). One trained layer, texts cut
    to 48 tokens, temperature 0.2, lr 1e-4: 0.0528 (frozen) -> 0.0552 after one epoch of 16,000 pairs, 0.0554 after
    two, 0.0551 after three. At temperature 0.05 training pushes apart items that read alike and follow each other:
    two layers at lr 5e-5 fell from 0.0542 (64 tokens) to 0.0482 in an epoch. A linear map over the frozen vectors
    (0.0537) as a quick probe of the objective: temperature 0.05 gave 0.040-0.045, 0.1 0.048-0.052, 0.2
    0.054-0.056, 0.5 and 1.0 0.026-0.040; pairs up to 3 or 5 items apart no better than the next item.

    The head (2026-12-08, same validation): what the linear map lacked was the whole catalog as negatives and the
    score's own shape. Over the frozen vectors, the history's mean against every item, temperature 0.1, lr 1e-3:
    0.0537 -> 0.0638 / 0.0669 / 0.0684 after 1 / 2 / 3 epochs, 0.0714 after 8 (still rising, slowly); the next
    item against every item instead of the mean 0.0655 after 6; temperature 0.05 0.0698 and lr 3e-3 0.0704 at 6
    and 8. The top layer trained by the same objective (the rest of the catalog from the epoch's cached vectors)
    fell to 0.0411 in an epoch: moving the batch's items against stale ones is what it learned."""

    trained_layers: int = 1  # top transformer layers trained; the ones below are frozen and computed once per item
    max_tokens: int = 48  # tokens of an item's text while training (Amazon-Scientific: mean 48, p90 64)
    window: int = 1  # a pair is an item and one of the next ``window`` items of the same history
    batch_size: int = 256  # pairs per step; the batch's other items are the negatives
    lr: float = 1e-4
    weight_decay: float = 0.01
    temperature: float = 0.2
    max_epochs: int = 2
    patience: int = 1  # epochs without a better validation NDCG@10 (text alone) before stopping
    pairs_per_epoch: int = 16_000  # an epoch is at most this many pairs, sampled: its cost does not grow with the data
    eval_users: int = 10_000  # validation users of the early-stopping score (a seeded sample)
    # The linear head, trained after the layers on the catalog's vectors through them (see train_head).
    head_epochs: int = 8
    head_lr: float = 1e-3
    head_temperature: float = 0.1
    head_history: int = 10  # the most recent items of a history whose mean vector predicts the next item
    head_batch_size: int = 512
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TunedEncoder:
    """The adapted encoder (a transformers model and its tokenizer, on the CPU) and how it got there."""

    model: Any  # transformers BertModel
    tokenizer: Any
    base_path: Path  # the model folder it started from
    config: TuningConfig
    val_ndcg: list[float]  # validation NDCG@10 of the text alone: [0] the base model, [e] after epoch e
    best_epoch: int  # 0: no epoch beat the base model (the model is then the base model)
    seconds: float
    head: Tensor | None = None  # (hidden, hidden) linear map of the pooled vector; None: no head epoch paid
    head_val_ndcg: list[float] = field(default_factory=list)  # [0] without the head, [e] after head epoch e

    def save(self, folder: Path) -> None:
        """The adapted model as a model folder, loadable as the base model is."""
        write_model_folder(folder, self.model, self.tokenizer, self.base_path, self.head)

    def summary(self) -> dict[str, Any]:
        return {
            **self.config.to_dict(),
            "val_ndcg_text_only": [round(v, 6) for v in self.val_ndcg],
            "best_epoch": self.best_epoch,
            "head_val_ndcg_text_only": [round(v, 6) for v in self.head_val_ndcg],
            "head": self.head is not None,
            "seconds": round(self.seconds, 1),
        }


def training_pairs(train: Sequence[Sequence[int]], window: int) -> np.ndarray:
    """(P, 2) catalog indexes: every item of a training sequence with each of the next ``window`` items of it
    (the same item twice is no pair). A pair that recurs in many histories recurs here as often."""
    pairs = [
        (seq[i], seq[j])
        for seq in train
        for i in range(len(seq))
        for j in range(i + 1, min(len(seq), i + 1 + window))
        if seq[i] != seq[j]
    ]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def contrastive_loss(
    anchors: Tensor, positives: Tensor, anchor_ids: Tensor, positive_ids: Tensor, tau: float
) -> Tensor:
    """Symmetric InfoNCE over unit vectors: row i's positive is column i; a column that holds row i's own item or
    its positive's item elsewhere in the batch is no negative."""
    logits = anchors @ positives.T / tau
    same = (positive_ids[None, :] == positive_ids[:, None]) | (positive_ids[None, :] == anchor_ids[:, None])
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, torch.finfo(logits.dtype).min)
    labels = torch.arange(len(anchors), device=anchors.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def history_examples(train: Sequence[Sequence[int]], history: int) -> list[tuple[tuple[int, ...], int]]:
    """(the ``history`` most recent items before position t, the item at t) for every position t >= 1 of every
    training sequence; an item the user had already is no example (the masked score never ranks it)."""
    out = []
    for seq in train:
        for t in range(1, len(seq)):
            before = tuple(seq[max(0, t - history) : t])
            if seq[t] not in before:
                out.append((before, seq[t]))
    return out


def head_loss(
    vectors: Tensor,
    head: Tensor,
    batch: Sequence[tuple[tuple[int, ...], int]],
    temperature: float,
    untrained: Tensor,
) -> Tensor:
    """Cross-entropy of each example's next item over the catalog's trained items, scored as the text alone
    scores: the cosine of each item's vector (through ``head``) to the unit mean of the history's; the history's
    own items are no candidates, and neither are the ``untrained`` ones (a boolean mask of the items no training
    history holds: as negatives only, the head would learn to bury every item without interactions, new ones
    included)."""
    items = F.normalize(vectors @ head.T, dim=-1)
    rows = torch.tensor([r for r, (before, _) in enumerate(batch) for _ in before])
    columns = torch.tensor([i for before, _ in batch for i in before])
    users = F.normalize(torch.zeros(len(batch), items.shape[1]).index_add(0, rows, items[columns]), dim=-1)
    logits = (users @ items.T / temperature).masked_fill(untrained, -math.inf)
    logits = logits.index_put((rows, columns), torch.tensor(-math.inf))
    return F.cross_entropy(logits, torch.tensor([target for _, target in batch]))


def train_head(
    vectors: Tensor, split: Split, val: Sequence[Case], config: TuningConfig
) -> tuple[Tensor | None, list[float]]:
    """A linear map of the pooled vectors, from the identity, trained on ``split.train`` by :func:`head_loss`; the
    epoch with the best validation NDCG@10 of the text alone, or None when none beats the vectors without it.

    The text score is a cosine to the history's mean, so the head learns that objective: the mean of the
    history's vectors points at the next item among every item some training history holds. It is cheap because
    the catalog is fixed: the vectors are computed once and only the map is trained."""
    generator = torch.Generator().manual_seed(config.seed)
    examples = history_examples(split.train, config.head_history)
    untrained = torch.ones(len(vectors), dtype=torch.bool)
    untrained[torch.tensor(sorted({i for seq in split.train for i in seq}), dtype=torch.long)] = False
    head = nn.Parameter(torch.eye(vectors.shape[1]))
    optimizer = torch.optim.AdamW([head], lr=config.head_lr, weight_decay=0.0)

    def val_ndcg(weights: Tensor) -> float:
        return evaluate(TextScorer(F.normalize(vectors @ weights.T, dim=-1)), val, mask=True, ks=(10,))["ndcg@10"]

    history = [val_ndcg(torch.eye(vectors.shape[1]))]
    best: Tensor | None = None
    for epoch in range(1, config.head_epochs + 1):
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(0, len(order), config.head_batch_size):
            loss = head_loss(
                vectors,
                head,
                [examples[i] for i in order[start : start + config.head_batch_size]],
                config.head_temperature,
                untrained,
            )
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
        with torch.no_grad():
            history.append(val_ndcg(head.detach()))
        if history[-1] > max(history[:-1]):
            best = head.detach().clone()
        elif epoch - int(np.argmax(history)) >= config.patience:
            break
    return best, history


class CachedItems:
    """Each item's hidden states after the frozen layers (computed once) and the trained top layers over them."""

    def __init__(self, model: Any, tokens: Sequence[Sequence[int]], config: TuningConfig, device: torch.device):
        self.bert = UnpaddedBert(model)
        self.frozen = len(self.bert.layers) - config.trained_layers
        self.top = self.bert.layers[self.frozen :]
        self.device = device
        self.lengths = torch.tensor([len(t) for t in tokens])
        self.order = np.argsort(self.lengths.numpy(), kind="stable")
        self.autocast = device.type == "cuda" or cpu_has_native_bf16()
        self.states: list[Tensor] = [torch.empty(0)] * len(tokens)
        with torch.inference_mode(), self._autocast():
            for batch in np.array_split(self.order, max(1, len(tokens) // 64)):
                ids, mask = _padded([tokens[i] for i in batch])
                states = self.bert.states(ids.to(device), mask, self.frozen)
                for item, rows in zip(batch, torch.split(states.to(torch.bfloat16), mask.sum(1).tolist()), strict=True):
                    self.states[item] = rows.clone()

    def _autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def vectors(self, items: Sequence[int]) -> Tensor:
        """(len(items), hidden) unit vectors through the top layers, differentiable when grad is enabled."""
        lengths = self.lengths[list(items)]
        mask = (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).numpy()
        packing = Packing.of(mask, self.device, rounded=False)
        x = torch.cat([self.states[i] for i in items]).to(self.device).float()
        with self._autocast():
            x = run_layers(self.top, self.bert.heads, x, packing)
        return F.normalize(packing.mean(x), dim=-1)

    def catalog(self) -> np.ndarray:
        """(n, hidden) float32 unit vectors of every item with the current weights."""
        out = torch.zeros(len(self.states), self.bert.model.config.hidden_size)
        with torch.inference_mode():
            for batch in np.array_split(self.order, max(1, len(self.states) // 128)):
                out[torch.from_numpy(batch)] = self.vectors(batch.tolist()).cpu()
        vectors: np.ndarray = out.numpy()
        return vectors


def _padded(rows: Sequence[Sequence[int]]) -> tuple[Tensor, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = np.zeros((len(rows), width), dtype=bool)
    for n, row in enumerate(rows):
        ids[n, : len(row)] = torch.tensor(row)
        mask[n, : len(row)] = True
    return ids, mask


def tune_encoder(
    split: Split, texts: Sequence[str], base_path: Path, config: TuningConfig, progress: bool = True
) -> TunedEncoder:
    """The encoder at ``base_path`` with its top layers trained on ``split.train``'s pairs; the epoch with the best
    validation NDCG@10 of text alone (the base model when none beats it). ``texts`` are the catalog's item texts
    in ``split.item_ids`` order, as the suite embeds them."""
    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    tokenizer = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    model = AutoModel.from_pretrained(base_path, local_files_only=True).to(device).eval()
    tokens = tokenizer(list(texts), truncation=True, max_length=config.max_tokens)["input_ids"]
    items = CachedItems(model, tokens, config, device)
    val = sample_cases(split.val, config.eval_users, config.seed)

    def val_ndcg() -> float:
        text = TextScorer(torch.from_numpy(items.catalog()))
        return evaluate(text, val, mask=True, ks=(10,))["ndcg@10"]

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trained = [p for layer in items.top for p in layer.parameters()]
    for parameter in trained:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
    pairs = training_pairs(split.train, config.window)
    rng = np.random.default_rng(config.seed)
    history = [val_ndcg()]
    best_epoch, best_state = 0, [copy.deepcopy(layer.state_dict()) for layer in items.top]
    bar = tqdm(range(1, config.max_epochs + 1), desc="adapt encoder", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        order = rng.permutation(len(pairs))[: config.pairs_per_epoch]
        total = 0.0
        for layer in items.top:
            layer.train()
        for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
            batch = torch.from_numpy(pairs[order[start : start + config.batch_size]])
            distinct, where = torch.unique(batch.flatten(), return_inverse=True)
            vectors = items.vectors(distinct.tolist())[where.view(-1, 2)]
            loss = contrastive_loss(vectors[:, 0], vectors[:, 1], batch[:, 0], batch[:, 1], config.temperature)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            total += loss.item() * len(batch)
        for layer in items.top:
            layer.eval()
        history.append(val_ndcg())
        bar.set_postfix(loss=f"{total / max(len(order), 1):.3f}", val_ndcg=f"{history[-1]:.4f}")
        if history[-1] > history[best_epoch]:
            best_epoch, best_state = epoch, [copy.deepcopy(layer.state_dict()) for layer in items.top]
        elif epoch - best_epoch >= config.patience:
            break
    bar.close()
    for layer, state in zip(items.top, best_state, strict=True):
        layer.load_state_dict(state)
    for parameter in trained:
        parameter.requires_grad_(False)
    model.cpu().eval()
    return TunedEncoder(model, tokenizer, base_path, config, history, best_epoch, time.perf_counter() - started)
