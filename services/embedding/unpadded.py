"""A BERT forward pass that runs the token-wise layers on the real tokens only.

In a BERT layer almost all the work is token-wise (the query/key/value, output and feed-forward projections:
~12 x hidden^2 multiply-adds per token, against ~2 x length x hidden for attention at item-text lengths), so a
padded batch pays for every padding token. Here the tokens of a batch are packed into one (tokens, hidden)
matrix; only attention sees the padded (batch, heads, length, head_dim) layout, with the same key mask as
transformers' own path. Texts of mixed lengths then cost what their tokens cost, whatever the batch's order
(docs/performance.md: +28% on arrival-order batches of item texts). The result is mean-pooled in fp32.

It reads transformers' `BertModel` modules as they are (embeddings, then per layer attention.self.query/key/
value, attention.output, intermediate, output), so any model of that architecture with absolute positions
runs on it; `supports` says which."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertModel
from transformers.models.bert.modeling_bert import BertLayer


def supports(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    return (
        isinstance(model, BertModel)
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and not getattr(config, "is_decoder", False)
    )


def packed_rows(tokens: int) -> int:
    """Rows of the packed matrix for `tokens` real tokens: rounded up to 8 steps per power of two (at most
    1/8 more; the spare rows repeat a token and are dropped). The CPU's matrix kernels are built and cached per
    shape, and one shape per token count kept that cache growing with the traffic (~300 MB more resident over
    a few thousand batches); rounded, 64 shapes cover up to 8,192 tokens."""
    step = max(8, 1 << max(0, tokens.bit_length() - 4))
    return -(-tokens // step) * step


@dataclass(frozen=True)
class Packing:
    """Where a batch's real tokens sit in its padded (batch, length) layout: the packed matrix's row r is flat
    position ``take[r]``; rows past ``tokens`` repeat the first token and are dropped."""

    batch: int
    length: int
    tokens: int
    take: torch.Tensor  # (rows,) int64
    lengths: torch.Tensor  # (batch,) int64
    key_mask: torch.Tensor  # (batch, 1, 1, length) bool

    @classmethod
    def of(cls, mask: np.ndarray, device: torch.device, rounded: bool = True) -> Packing:
        """The packing of the (batch, length) boolean ``mask`` of real tokens; ``rounded`` pads the row count
        with :func:`packed_rows` (the service's shapes stay few), else exactly the real tokens."""
        real = np.flatnonzero(mask)
        tokens = len(real)
        rows = packed_rows(tokens) if rounded else tokens
        take = torch.from_numpy(np.concatenate([real, np.full(rows - tokens, real[0])])).to(device)
        lengths = torch.from_numpy(mask.sum(axis=1)).to(device)
        key_mask = torch.from_numpy(mask).to(device)[:, None, None, :]
        return cls(mask.shape[0], mask.shape[1], tokens, take, lengths, key_mask)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(batch, length, hidden) -> (rows, hidden)."""
        return padded.reshape(self.batch * self.length, -1)[self.take]

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, hidden) float32 means over each row's real tokens of the packed ``x``."""
        owner = torch.repeat_interleave(torch.arange(self.batch, device=x.device), self.lengths)
        sums = torch.zeros(self.batch, x.shape[-1], dtype=torch.float32, device=x.device)
        sums.index_add_(0, owner, x[: self.tokens].float())
        return sums / self.lengths.clamp(min=1)[:, None].float()


def run_layers(layers: Sequence[BertLayer], heads: int, x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """BERT ``layers`` over the packed hidden states ``x`` (rows, hidden); only attention sees the padded layout.
    Differentiable, so training runs the same arithmetic as serving (without dropout)."""
    hidden = x.shape[-1]
    head_dim = hidden // heads
    scatter = packing.take[: packing.tokens]
    for layer in layers:
        attention = layer.attention.self
        qkv = torch.cat([attention.query(x), attention.key(x), attention.value(x)], dim=1)
        padded = qkv.new_zeros(packing.batch * packing.length, 3 * hidden)
        padded[scatter] = qkv[: packing.tokens]
        query, key, value = padded.view(packing.batch, packing.length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=packing.key_mask)
        context = context.transpose(1, 2).reshape(packing.batch * packing.length, hidden)[packing.take]
        x = layer.attention.output.LayerNorm(layer.attention.output.dense(context) + x)
        x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
    return x


class UnpaddedBert:
    def __init__(self, model: BertModel) -> None:
        if not supports(model):
            raise ValueError(f"{type(model).__name__} is not an encoder-only BERT with absolute positions")
        self.model = model
        self.heads = int(model.config.num_attention_heads)
        self.layers = [cast(BertLayer, layer) for layer in model.encoder.layer]

    def states(self, input_ids: torch.Tensor, mask: np.ndarray, layers: int) -> torch.Tensor:
        """The hidden states of the real tokens (tokens, hidden), row after row, after the embeddings and the
        first ``layers`` layers."""
        packing = Packing.of(mask, input_ids.device, rounded=False)
        x = packing.pack(self.model.embeddings(input_ids=input_ids))
        return run_layers(self.layers[:layers], self.heads, x, packing)

    def mean_pooled(self, input_ids: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
        """(batch, hidden) float32 means of the last layer over each row's real tokens; `mask` is the (batch,
        length) boolean numpy mask of real tokens, `input_ids` the padded ids on the model's device."""
        packing = Packing.of(mask, input_ids.device)
        x = packing.pack(self.model.embeddings(input_ids=input_ids))
        return packing.mean(run_layers(self.layers, self.heads, x, packing))
