"""Settings of the embedding service (environment prefix EMBEDDING_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class EmbeddingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDING_", extra="ignore")

    port: int = Field(50052, ge=0, le=65535, description="gRPC port.")
    model_path: Path | None = Field(
        None, description="Local Hugging Face model folder; default: the installed all-MiniLM-L6-v2."
    )
    model_id: str = Field("", description="Name reported by GetModelInfo; default: derived from the folder.")
    encoder_dir: Path | None = Field(
        None,
        description="Folder of encoder versions adapted by `recsys train` (its checkpoint folder's encoders/, e.g. "
        "var/checkpoints/encoders).",
    )
    encoder_version: str = Field(
        "",
        description="Encoder version served when a call names none (a folder of EMBEDDING_ENCODER_DIR); empty: the "
        "base model (EMBEDDING_MODEL_PATH or the packaged all-MiniLM-L6-v2).",
    )
    max_encoders: int = Field(
        2,
        ge=1,
        description="Encoders held at once: the current one and, during a rollout, versions EmbedTexts names "
        "(each loaded on first use).",
    )
    device: str = Field("auto", description="auto (CUDA when present), cpu or cuda:N.")
    dtype: str = Field(
        "auto",
        description="auto (float16 on CUDA; on a CPU with AVX512-BF16/AMX bfloat16 autocast, else float32), "
        "float32, float16, bfloat16.",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="CPU threads for torch; 0: one fewer than the usable cores (at least 1), leaving one to "
        "tokenisation and gRPC (docs/performance.md).",
    )
    max_batch_size: int = Field(
        128,
        ge=1,
        le=4096,
        description="Most texts in one batch gathered from concurrent requests; it is sorted by length and run in "
        "forward passes of EMBEDDING_FORWARD_BATCH_SIZE.",
    )
    forward_batch_size: int = Field(
        0,
        ge=0,
        le=4096,
        description="Most texts in one forward pass; 0: 32 on the CPU (its throughput peaks at 8-32), the whole "
        "batch on CUDA.",
    )
    remove_padding: bool = Field(
        True,
        description="On the CPU, run a BERT model's token-wise layers on the real tokens only (padding costs "
        "nothing there); false: transformers' own padded forward.",
    )
    max_batch_tokens: int = Field(
        8192,
        ge=1,
        description="Most tokens in one batch, and padded tokens in one forward pass; a longer text runs alone.",
    )
    tokenizer_threads: int = Field(0, ge=0, description="Threads that tokenise requests; 0: min(4, CPU cores).")
    max_batch_wait_ms: float = Field(
        2.0,
        ge=0,
        description="How long a batch waits for more requests when requests have been sharing batches (a lone "
        "request runs at once).",
    )
    max_queued_texts: int = Field(
        4096,
        ge=1,
        description="Waiting texts (per encoder held, queries and bulk requests each) beyond this: RESOURCE_EXHAUSTED.",
    )
    max_texts_per_request: int = Field(1024, ge=1, description="Most texts in one EmbedTexts call.")
    max_text_chars: int = Field(65_536, ge=1, description="Longest text accepted, in characters.")
