"""Sequential ranker: a causal transformer over the user's history, items as text + ID embeddings.

An item is r(i) = LayerNorm(W_text · text(i) + id_emb(i)). Items unknown at training time (the catalog grows after
training) have no ID embedding and are scored from their text alone; training drops ID embeddings at random so
that the text path carries most of the signal. The user is the causal encoder's output at the last history
position, and score(u, i) = <u, r(i)>.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

UNKNOWN_ID = 0  # row 0 of the ID table: padding and items unknown at training time (always zero)


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
class ScoreRequest:
    """One user's history and the candidates to score for them; vectors are the items' text embeddings."""

    history_item_ids: Sequence[str]
    history_vectors: np.ndarray
    candidate_item_ids: Sequence[str]
    candidate_vectors: np.ndarray


@dataclass
class RankerScorer:
    """Inference wrapper around a trained :class:`RankerModel`.

    Known item IDs use their ID embedding plus text; unknown IDs are scored from text alone. With an empty history
    every candidate scores 0.0 (no popularity prior is learned, so there is nothing better to say); callers keep
    their own order then.
    """

    model: RankerModel
    item_ids: tuple[str, ...]
    device: str = "cpu"
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {item_id: i + 1 for i, item_id in enumerate(self.item_ids)}
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
        max_len = self.model.config.max_len
        with torch.inference_mode():
            # Keep the most recent max_len items; right-pad to the longest history in the batch.
            histories = [
                (list(requests[n].history_item_ids)[-max_len:], np.asarray(requests[n].history_vectors)[-max_len:])
                for n in active
            ]
            width = max(len(ids) for ids, _ in histories)
            text = np.zeros((len(active), width, text_dim), dtype=np.float32)
            ids_matrix = np.zeros((len(active), width), dtype=np.int64)
            for row, (ids, vectors) in enumerate(histories):
                text[row, : len(ids)] = vectors
                ids_matrix[row, : len(ids)] = self._lookup(ids)
            lengths = torch.tensor([len(ids) for ids, _ in histories], device=self.device)
            history = self.model.item_repr(self._tensor(text), self._tensor(ids_matrix))
            users = self.model.user_repr(history, lengths)

            candidate_ids = [i for n in active for i in requests[n].candidate_item_ids]
            candidate_text = np.concatenate([np.asarray(requests[n].candidate_vectors) for n in active])
            candidates = self.model.item_repr(
                self._tensor(candidate_text.astype(np.float32, copy=False)),
                self._tensor(self._lookup(candidate_ids)),
            )
            owner = torch.repeat_interleave(
                torch.arange(len(active), device=self.device),
                torch.tensor([len(requests[n].candidate_item_ids) for n in active], device=self.device),
            )
            scores = (candidates * users[owner]).sum(-1).float().cpu().numpy()
        start = 0
        for n in active:
            m = len(requests[n].candidate_item_ids)
            results[n] = scores[start : start + m].astype(np.float32)
            start += m
        return results

    def _lookup(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.fromiter((self._index.get(i, UNKNOWN_ID) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def _tensor(self, array: np.ndarray) -> Tensor:
        return torch.from_numpy(array).to(self.device)
