"""The ranker: a causal transformer over the user's history fused with an item-to-item graph and a text prior.

An item is r(i) = LayerNorm(W_text · text(i) + id_emb(i)). Items unknown at training time (the catalog grows after
training) have no ID embedding and are scored from their text alone; training drops ID embeddings at random so
that the text path carries most of the signal. The user is the causal encoder's output at the last history
position, and the sequence score is <u, r(i)>.

The served score adds two terms with weights tuned on validation (:class:`Fusion`): an item-to-item graph (EASE
weights, pruned; the strongest collaborative signal on sparse data, which the transformer alone does not match)
and the cosine of the candidate's text to a recency-weighted mean of the history's texts (the prior that reaches
items without interactions). All three are linear in fixed weights, so a candidate's score does not depend on
which other candidates are scored with it: the full-catalog evaluation and the gateway's candidate pool agree.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

UNKNOWN_ID = 0  # row 0 of the ID table: padding and items unknown at training time (always zero)
NEAREST_KNOWN_CACHE = 200_000  # unknown items whose nearest known item a scorer remembers (~100 bytes each)
# Known items whose float16 text is converted at once to match unknown items: 3 MB of float32 at 384 dimensions
# stays in cache; at 100k items this took 11 ms against 56 ms for one product with all the text held in float32.
TEXT_CHUNK = 2048


@dataclass(frozen=True)
class ModelConfig:
    """Architecture; stored in checkpoints. ``n_items`` counts the known item IDs (row 0 is kept for unknown)."""

    n_items: int
    text_dim: int = 384
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.5
    id_dropout: float = 0.3
    use_text: bool = True  # False: an ID-only (SASRec-style) model, the baseline without text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        return cls(**data)


class RankerModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.text_proj = nn.Linear(config.text_dim, config.dim)
        self.id_emb = nn.Embedding(config.n_items + 1, config.dim, padding_idx=UNKNOWN_ID)
        nn.init.normal_(self.id_emb.weight, std=0.02)
        with torch.no_grad():
            self.id_emb.weight[UNKNOWN_ID].zero_()
        self.item_norm = nn.LayerNorm(config.dim)
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=config.dim,
            nhead=config.heads,
            dim_feedforward=2 * config.dim,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(config.dim)

    def item_repr(self, text: Tensor, ids: Tensor) -> Tensor:
        """(..., text_dim) text vectors and (...) ID indexes (0 = unknown) -> (..., dim)."""
        if not self.config.use_text:
            only_ids: Tensor = self.item_norm(self.id_emb(ids))
            return only_ids
        if self.training and self.config.id_dropout > 0:
            drop = torch.rand(ids.shape, device=ids.device) < self.config.id_dropout
            ids = ids.masked_fill(drop, UNKNOWN_ID)
        out: Tensor = self.item_norm(self.text_proj(text) + self.id_emb(ids))
        return out

    def encode(self, history: Tensor) -> Tensor:
        """(B, L, dim) item representations, right-padded -> (B, L, dim) user state after each position.

        The causal mask keeps every real position from seeing the padding that follows it, so no padding mask is
        needed (and no row is fully masked, which would give NaN).
        """
        length = history.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"history of {length} positions exceeds max_len {self.config.max_len}")
        positions = torch.arange(length, device=history.device)
        x = self.dropout(history + self.pos_emb(positions))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=history.device, dtype=x.dtype)
        out: Tensor = self.out_norm(self.encoder(x, mask=mask, is_causal=True))
        return out

    def user_repr(self, history: Tensor, lengths: Tensor) -> Tensor:
        """(B, L, dim) right-padded history and (B,) lengths >= 1 -> (B, dim) state at the last real position."""
        states = self.encode(history)
        return states[torch.arange(states.shape[0], device=states.device), lengths - 1]


@dataclass(frozen=True)
class Fusion:
    """Weights of the served score: sequence · <u, r(i)> + graph · graph(u, i) + text · cos(text(i), t(u))
    - novelty · [i in the history].

    The graph term sums the item graph's rows of the history, the j-th most recent item weighted by
    ``graph_decay ** j``; t(u) sums the history's unit text vectors weighted by ``text_decay ** j`` (1.0: plain
    sum; small: mostly the last item). ``novelty`` is what an item the user already has loses: how rarely users
    come back to an item, for rankings that keep seen items (where they are excluded it changes nothing)."""

    sequence: float = 1.0
    graph: float = 0.0
    text: float = 0.0
    text_decay: float = 1.0
    graph_decay: float = 1.0
    novelty: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> Fusion:
        return cls(**data)


def recency_weights(length: int, decay: float) -> np.ndarray:
    """(length,) float32: the last position weighs 1, the one before ``decay``, and so on."""
    out: np.ndarray = (decay ** np.arange(length - 1, -1, -1, dtype=np.float64)).astype(np.float32)
    return out


@dataclass(frozen=True, eq=False)
class ItemGraph:
    """Sparse item-to-item weights over the known items (1-based; row and column 0 = unknown stay empty), held once,
    by source row (CSR arrays): scoring reads the rows of the history's items only, about history length x kept
    weights entries, where a sparse product over the whole graph cost ~27 ms per call on this CPU
    (bench/ranker_scoring.py). 8 bytes a kept weight and 8 a row in memory, as in the checkpoint."""

    pointers: np.ndarray  # (n + 2,) int64: source i's weights are entries pointers[i]:pointers[i + 1]
    targets: np.ndarray  # (nnz,) int32 target items, distinct within a source
    values: np.ndarray  # (nnz,) float32
    # (n, text_dim) float16 unit text vectors of the known items (row i: item i + 1), or None (checkpoints before
    # it); float16 halves the largest per-item array after the graph, and each use converts a chunk at a time.
    # An unknown item takes the graph score of the known item nearest to it in text: cold-start Recall@10 rose
    # from 0 to 0.100 on ml-100k and from 0.101 to 0.136 on Amazon-Scientific (`recsys eval`). One neighbour:
    # averaging over more shrinks the score and leaves new items behind the known ones (ml-100k, 2: 0.051, 5: 0.013).
    known_text: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (
            self.pointers.ndim != 1
            or self.pointers[0] != 0
            or self.pointers[-1] != len(self.targets)
            or len(self.targets) != len(self.values)
            or np.any(self.pointers[1:] < self.pointers[:-1])
            or (len(self.targets) and not 0 <= int(self.targets.min()) <= int(self.targets.max()) < self.size)
        ):
            raise ValueError("malformed item graph: pointers, targets and values disagree")

    @property
    def size(self) -> int:
        """n + 1: the known items and the unknown row 0."""
        return len(self.pointers) - 1

    @property
    def transposed(self) -> Tensor:
        """The weights as a sparse (n + 1, n + 1) COO tensor, target x source, built on each call (scoring never
        needs it)."""
        sources = np.repeat(np.arange(self.size, dtype=np.int64), np.diff(self.pointers))
        indices = torch.from_numpy(np.stack([self.targets.astype(np.int64), sources]))
        graph = torch.sparse_coo_tensor(
            indices, torch.from_numpy(self.values), (self.size, self.size), check_invariants=True
        )
        return graph.coalesce()

    @classmethod
    def from_dense(cls, weights: Tensor, keep: int, known_text: np.ndarray | None = None) -> ItemGraph:
        """Keep each source item's ``keep`` largest-magnitude weights; ``weights`` is (n + 1, n + 1), ``known_text``
        (n, text_dim) the known items' text vectors."""
        return cls.from_sparse(sp.csr_matrix(weights.numpy()), keep, known_text)

    @classmethod
    def from_sparse(cls, weights: sp.spmatrix, keep: int, known_text: np.ndarray | None = None) -> ItemGraph:
        """:meth:`from_dense` for a scipy sparse (n + 1, n + 1) ``weights``, which large catalogs need: each source
        item's ``keep`` largest-magnitude weights, strongest first."""
        coo = sp.coo_matrix(weights)
        nonzero = (coo.data != 0) & (coo.row != UNKNOWN_ID) & (coo.col != UNKNOWN_ID)
        rows, cols, values = coo.row[nonzero], coo.col[nonzero], coo.data[nonzero].astype(np.float32)
        order = np.lexsort((cols, -np.abs(values), rows))  # by source, strongest first
        rows, cols, values = rows[order], cols[order], values[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
        kept = rank < keep
        counts = np.bincount(rows[kept], minlength=weights.shape[0])
        pointers = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        text = None if known_text is None else _unit(np.asarray(known_text, dtype=np.float32)).astype(np.float16)
        return cls(pointers, cols[kept].astype(np.int32), values[kept], text)

    def to_tensors(self) -> dict[str, Tensor]:
        """The checkpoint's form: the same arrays (the graph is most of a large catalog's checkpoint)."""
        out = {
            "pointers": torch.from_numpy(self.pointers),
            "targets": torch.from_numpy(self.targets),
            "values": torch.from_numpy(self.values),
        }
        if self.known_text is not None:
            out["known_text"] = torch.from_numpy(self.known_text)
        return out

    @classmethod
    def from_tensors(cls, data: Mapping[str, Tensor]) -> ItemGraph:
        """The graph of a checkpoint's tensors, sharing their memory; checkpoints before the by-source form (one
        target x source COO ``indices`` matrix, int64 or int32, and ``values``) are regrouped by source."""
        text = data.get("known_text")
        known_text = None if text is None else text.to(torch.float16).numpy()  # older checkpoints may hold float32
        if "pointers" in data:
            return cls(data["pointers"].numpy(), data["targets"].numpy(), data["values"].numpy(), known_text)
        size = int(data["size"][1])
        targets, sources = data["indices"].numpy()
        order = np.argsort(sources, kind="stable")
        pointers = np.concatenate([[0], np.cumsum(np.bincount(sources, minlength=size))]).astype(np.int64)
        values = np.asarray(data["values"].numpy(), dtype=np.float32)[order]
        return cls(pointers, targets[order].astype(np.int32), values, known_text)

    def columns(self, index: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """The graph columns that score candidates (1-based indexes, 0 = unknown, and their text vectors): a
        known item's own; an unknown item's nearest known item in text, when the known items' text is here."""
        unknown = np.flatnonzero(index == UNKNOWN_ID)
        if self.known_text is None or not len(unknown):
            return index
        queries = torch.from_numpy(_unit(np.asarray(vectors[unknown], dtype=np.float32)))
        known = torch.from_numpy(self.known_text)
        best = torch.full((len(unknown),), -math.inf)
        nearest = torch.zeros(len(unknown), dtype=torch.long)
        for start in range(0, len(known), TEXT_CHUNK):
            value, top = (queries @ known[start : start + TEXT_CHUNK].float().T).max(dim=1)
            better = value > best  # strictly: the first of equal maxima wins, as one argmax over all would pick
            best, nearest = torch.where(better, value, best), torch.where(better, top + start, nearest)
        out = index.copy()
        out[unknown] = nearest.numpy() + 1
        return out

    def scores(self, histories: Sequence[np.ndarray], decay: float = 1.0) -> Tensor:
        """(B, n + 1) graph scores of every known item for histories of 1-based indexes (0 = unknown); an item
        seen twice counts once, at its most recent position."""
        out = np.zeros((len(histories), self.size), dtype=np.float32)
        for row, history in enumerate(histories):
            weights: dict[int, float] = {}
            for item, weight in zip(history.tolist(), recency_weights(len(history), decay).tolist(), strict=True):
                if item != UNKNOWN_ID:
                    weights[item] = max(weight, weights.get(item, 0.0))
            for item, weight in weights.items():
                start, end = self.pointers[item], self.pointers[item + 1]
                # A source's targets are distinct, so a fancy-indexed add is exact.
                out[row, self.targets[start:end]] += weight * self.values[start:end]
        return torch.from_numpy(out)


@dataclass(frozen=True)
class ScoreRequest:
    """One user's history and the candidates to score for them; vectors are the items' text embeddings."""

    history_item_ids: Sequence[str]
    history_vectors: np.ndarray
    candidate_item_ids: Sequence[str]
    candidate_vectors: np.ndarray


def _unit(array: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    out: np.ndarray = array / np.maximum(norms, 1e-12)
    return out


@dataclass
class RankerScorer:
    """Inference wrapper: the trained :class:`RankerModel`, the optional :class:`ItemGraph` and the
    :class:`Fusion` weights.

    Known item IDs use their ID embedding plus text; unknown IDs are scored from text alone, and take the graph
    term of the known item nearest in text when the graph has the known items' text. With an empty history
    every candidate scores 0.0 (no popularity prior is learned, so there is nothing better to say); callers keep
    their own order then.
    """

    model: RankerModel
    item_ids: tuple[str, ...]
    device: str = "cpu"
    graph: ItemGraph | None = None
    fusion: Fusion = field(default_factory=Fusion)
    _index: dict[str, int] = field(init=False, repr=False)
    # Unknown items' nearest known item in text, by key, with a digest of the vector it was found for: a match is a
    # product with every known item's text, which was 41% of the ranker's CPU per Recommend over a catalog of new
    # items (py-spy, 100k items), and a Recommend's candidates come back again and again.
    _nearest_known: dict[Hashable, tuple[int, int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {item_id: i + 1 for i, item_id in enumerate(self.item_ids)}
        self._nearest_known = {}
        self.model.to(self.device).eval()

    @property
    def max_history(self) -> int:
        return self.model.config.max_len

    def score(
        self,
        history_item_ids: Sequence[str],
        history_vectors: np.ndarray,
        candidate_item_ids: Sequence[str],
        candidate_vectors: np.ndarray,
    ) -> np.ndarray:
        """(m,) float32 scores of the candidates for one user; higher is better."""
        request = ScoreRequest(history_item_ids, history_vectors, candidate_item_ids, candidate_vectors)
        return self.score_many([request])[0]

    def score_many(self, requests: Sequence[ScoreRequest]) -> list[np.ndarray]:
        """Score several users in one forward pass; one (m_i,) float32 array per request."""
        text_dim = self.model.config.text_dim
        for n, r in enumerate(requests):
            for ids, vectors, what in (
                (r.history_item_ids, r.history_vectors, "history"),
                (r.candidate_item_ids, r.candidate_vectors, "candidate"),
            ):
                shape = np.shape(vectors)
                if len(ids) and shape != (len(ids), text_dim):
                    raise ValueError(
                        f"request {n}: {what}_vectors has shape {shape}, expected ({len(ids)}, {text_dim})"
                    )
        results = [np.zeros(len(r.candidate_item_ids), dtype=np.float32) for r in requests]
        active = [n for n, r in enumerate(requests) if len(r.history_item_ids) and len(r.candidate_item_ids)]
        if not active:
            return results
        with torch.inference_mode():
            users = self._users(
                [self._lookup(requests[n].history_item_ids) for n in active],
                [np.asarray(requests[n].history_vectors, dtype=np.float32) for n in active],
                [requests[n].history_item_ids for n in active],
            )
            for row, n in enumerate(active):
                request = requests[n]
                scores = self._combine(
                    users,
                    slice(row, row + 1),
                    self._lookup(request.candidate_item_ids),
                    np.asarray(request.candidate_vectors, dtype=np.float32),
                    request.candidate_item_ids,
                )
                results[n] = scores[0].float().cpu().numpy()
        return results

    def suggest(self, history_item_ids: Sequence[str], limit: int) -> list[tuple[str, float]]:
        """Up to ``limit`` (item id, graph score) of the known items the item graph links to the history most
        strongly, best first; history items and items without a positive link are left out. Empty when the
        score has no graph term. The same term :meth:`score_many` adds, so the graph's best are proposed."""
        if self.graph is None or self.fusion.graph <= 0 or not len(history_item_ids) or limit < 1:
            return []
        history = self._lookup(history_item_ids)
        scores = self.graph.scores([history], self.fusion.graph_decay)[0]
        scores[UNKNOWN_ID] = -math.inf
        scores[torch.from_numpy(history)] = -math.inf
        top = torch.topk(scores, min(limit, len(scores)))
        return [
            (self.item_ids[index - 1], score)
            for score, index in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            if score > 0
        ]

    def score_catalog(
        self, histories: Sequence[Sequence[int]], catalog_ids: Sequence[str], catalog_vectors: np.ndarray
    ) -> Tensor:
        """(B, n) scores of every catalog item for each history (indexes into the catalog), by the same arithmetic
        as :meth:`score_many`; the offline evaluation ranks with this."""
        catalog_index = self._lookup(catalog_ids)
        vectors = np.asarray(catalog_vectors, dtype=np.float32)
        with torch.inference_mode():
            users = self._users(
                [catalog_index[np.asarray(h, dtype=np.int64)] for h in histories],
                [vectors[np.asarray(h, dtype=np.int64)] for h in histories],
                histories,
            )
            scores = self._combine(users, slice(0, len(histories)), catalog_index, vectors, range(len(catalog_ids)))
            scores = scores.float().cpu()
        return scores.clone()  # a normal tensor: callers mask it in place

    def _users(
        self, histories: Sequence[np.ndarray], vectors: Sequence[np.ndarray], keys: Sequence[Sequence[Hashable]]
    ) -> _Users:
        """User states for histories of 1-based indexes (0 = unknown), their text vectors and the keys (item ids, or
        catalog positions) that match them to candidates."""
        max_len = self.model.config.max_len
        recent = [(h[-max_len:], v[-max_len:]) for h, v in zip(histories, vectors, strict=True)]
        width = max(len(h) for h, _ in recent)
        text = np.zeros((len(recent), width, self.model.config.text_dim), dtype=np.float32)
        ids_matrix = np.zeros((len(recent), width), dtype=np.int64)
        for row, (ids, v) in enumerate(recent):
            text[row, : len(ids)] = v
            ids_matrix[row, : len(ids)] = ids
        lengths = torch.tensor([len(ids) for ids, _ in recent], device=self.device)
        history = self.model.item_repr(self._tensor(text), self._tensor(ids_matrix))
        sequence = self.model.user_repr(history, lengths)
        fusion = self.fusion
        graph = (
            self.graph.scores(histories, fusion.graph_decay).to(self.device)
            if self.graph is not None and fusion.graph
            else None
        )
        text_users = text_pooled = None
        text_own: list[dict[Hashable, np.ndarray]] = []
        if fusion.text:
            # The most recent item weighs 1, the one before text_decay, and so on.
            weighted = [fusion.text_decay ** np.arange(len(v))[::-1, None] * _unit(v) for v in vectors]
            pooled = np.stack([w.sum(0) for w in weighted]).astype(np.float32)
            text_users = self._tensor(_unit(pooled).astype(np.float32))
            text_pooled = self._tensor(pooled)
            for user_keys, w in zip(keys, weighted, strict=True):
                own: dict[Hashable, np.ndarray] = {}
                for key, row in zip(user_keys, w, strict=True):
                    own[key] = own.get(key, 0.0) + row
                text_own.append(own)
        seen = [set(user_keys) for user_keys in keys] if fusion.novelty else []
        return _Users(sequence, graph, text_users, text_pooled, text_own, seen)

    def _combine(
        self,
        users: _Users,
        rows: slice,
        candidates: np.ndarray,
        vectors: np.ndarray,
        candidate_keys: Sequence[Hashable],
    ) -> Tensor:
        """(rows, m) fused scores of m candidates (1-based indexes, 0 = unknown, text vectors and the keys that
        match them to history items)."""
        fusion = self.fusion
        index = self._tensor(candidates)
        text = self._tensor(vectors)
        scores = fusion.sequence * (users.sequence[rows] @ self.model.item_repr(text, index).T)
        if users.graph is not None and self.graph is not None:
            columns = self._tensor(self._graph_columns(candidates, vectors, candidate_keys))
            scores = scores + fusion.graph * users.graph[rows][:, columns]
        # Where each candidate's key is: the terms that treat history items apart look them up.
        position = {key: n for n, key in enumerate(candidate_keys)} if users.text_own or users.seen else {}
        if users.text is not None and users.text_pooled is not None:
            unit = self._tensor(_unit(vectors).astype(np.float32))
            scores = scores + fusion.text * (users.text[rows] @ unit.T)
            scores = self._without_own_text(scores, users, rows, unit, position)
        if users.seen:
            for row, seen in enumerate(users.seen[rows]):
                scores[row, [position[key] for key in seen if key in position]] -= fusion.novelty
        return scores

    def _graph_columns(self, index: np.ndarray, vectors: np.ndarray, keys: Sequence[Hashable]) -> np.ndarray:
        """:meth:`ItemGraph.columns`, with the unknown items matched before (to the same vector) taken from the
        cache; the rest are matched in one product and remembered."""
        assert self.graph is not None
        out = index.copy()
        todo: list[int] = []
        digests: dict[int, int] = {}
        for n in np.flatnonzero(index == UNKNOWN_ID).tolist():
            digest = hash(vectors[n].tobytes())
            cached = self._nearest_known.get(keys[n])
            if cached is not None and cached[0] == digest:
                out[n] = cached[1]
            else:
                todo.append(n)
                digests[n] = digest
        if todo:
            found = self.graph.columns(index[todo], vectors[todo])
            for n, column in zip(todo, found.tolist(), strict=True):
                out[n] = column
                if len(self._nearest_known) >= NEAREST_KNOWN_CACHE:
                    self._nearest_known.pop(next(iter(self._nearest_known)))
                self._nearest_known[keys[n]] = (digests[n], column)
        return out

    def _without_own_text(
        self, scores: Tensor, users: _Users, rows: slice, unit: Tensor, position: Mapping[Hashable, int]
    ) -> Tensor:
        """A history item's text term from the rest of the history: no item votes for itself, as in the item
        graph, whose EASE weights have a zero diagonal. Without it the text term ranks the history itself first,
        and seen items crowd out new ones wherever they are not excluded."""
        assert users.text is not None and users.text_pooled is not None
        owns = users.text_own[rows]
        if not any(owns):
            return scores
        for row, own in enumerate(owns):
            hits = [(position[key], vector) for key, vector in own.items() if key in position]
            if not hits:
                continue
            columns = torch.tensor([column for column, _ in hits], device=scores.device)
            rest = users.text_pooled[rows][row] - self._tensor(np.stack([v for _, v in hits]).astype(np.float32))
            rest = torch.nn.functional.normalize(rest, dim=-1)
            before = unit[columns] @ users.text[rows][row]
            after = (unit[columns] * rest).sum(-1)
            scores[row, columns] += self.fusion.text * (after - before)
        return scores

    def _lookup(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.fromiter((self._index.get(i, UNKNOWN_ID) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def _tensor(self, array: np.ndarray) -> Tensor:
        return torch.from_numpy(array).to(self.device)


@dataclass(frozen=True)
class _Users:
    sequence: Tensor  # (B, dim) transformer states
    graph: Tensor | None  # (B, n + 1) graph scores of every known item
    text: Tensor | None  # (B, text_dim) unit pooled history text
    text_pooled: Tensor | None = None  # (B, text_dim) the same before normalising
    text_own: list[dict[Hashable, np.ndarray]] = field(default_factory=list)  # per user: key -> its weighted share
    seen: list[set[Hashable]] = field(default_factory=list)  # per user: the history's keys, when novelty is fused
