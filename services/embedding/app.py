"""Composition root of the embedding service: the only place that loads the model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from services.common.metrics import embedding_metrics
from services.embedding.config import EmbeddingSettings
from services.embedding.embedder import Embedder, Encoder, EncoderVersions, Limits
from services.embedding.encoder import DEFAULT_MODEL_ID, TextEncoder, default_model_path, resolve_device
from services.embedding.servicer import EmbeddingServicer
from services.embedding.versions import METADATA_FILE, EncoderMetadata, list_versions, version_path

SERVICE_NAME = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name


def default_torch_threads() -> int:
    """One fewer than the cores this process may use, at least 1. torch's default (all cores) lets its OpenMP
    threads wait on each other whenever any core is busy with something else (the tokeniser, gRPC, another
    service): measured here on 2 cores, 2 threads ran 7x slower than 1 under such load (docs/performance.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def forward_batch_size(settings: EmbeddingSettings) -> int:
    """The setting, or by default 32 texts on the CPU (where throughput peaks at 8-32) and the whole gathered
    batch on CUDA; never more than a gathered batch holds."""
    if settings.forward_batch_size:
        return min(settings.forward_batch_size, settings.max_batch_size)
    on_cuda = resolve_device(settings.device).startswith("cuda")
    return settings.max_batch_size if on_cuda else min(32, settings.max_batch_size)


def base_model_path(settings: EmbeddingSettings) -> Path:
    return settings.model_path or default_model_path()


def base_model_id(settings: EmbeddingSettings) -> str:
    return settings.model_id or (DEFAULT_MODEL_ID if settings.model_path is None else "")


def load_encoder(settings: EmbeddingSettings, version: str | None = None) -> TextEncoder:
    """The encoder ``version`` (None: ``settings.encoder_version``): "" is the base model, anything else a
    folder of ``settings.encoder_dir``."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    version = settings.encoder_version if version is None else version
    path = base_model_path(settings)
    model_id = base_model_id(settings)
    if version:
        available = list_versions(settings.encoder_dir)
        if settings.encoder_dir is None or version not in available:
            raise FileNotFoundError(
                f"no encoder version {version!r} in EMBEDDING_ENCODER_DIR ({settings.encoder_dir}); "
                f"available: {', '.join(available) or 'none'}"
            )
        path = version_path(settings.encoder_dir, version)
        model_id = f"{EncoderMetadata.from_file(path / METADATA_FILE).base_model}@{version}"
    return encoder_at(settings, path, model_id)


def encoder_at(settings: EmbeddingSettings, path: Path, model_id: str) -> TextEncoder:
    """The model folder ``path`` as the service runs it (device, dtype, batching, packed forward)."""
    return TextEncoder(
        path,
        device=settings.device,
        dtype=settings.dtype,
        batch_size=forward_batch_size(settings),
        max_batch_tokens=settings.max_batch_tokens,
        model_id=model_id,
        remove_padding=settings.remove_padding,
    )


@dataclass(frozen=True)
class VersionFolder:
    """The encoder versions of ``settings.encoder_dir``, loaded with the service's settings."""

    settings: EmbeddingSettings

    def available(self) -> list[str]:
        return list_versions(self.settings.encoder_dir)

    def load(self, version: str) -> Encoder:
        return load_encoder(self.settings, version)


class EmbeddingApp:
    service_name = SERVICE_NAME

    def __init__(self, settings: EmbeddingSettings, encoder: Encoder, versions: EncoderVersions | None = None) -> None:
        metrics = embedding_metrics()
        metrics.model_loaded(encoder.model_id, encoder.dimension, encoder.device, encoder.dtype)
        self.embedder = Embedder(
            encoder,
            Limits(settings.max_texts_per_request, settings.max_text_chars),
            max_batch_size=settings.max_batch_size,
            max_batch_wait_s=settings.max_batch_wait_ms / 1000,
            max_queued_texts=settings.max_queued_texts,
            on_batch=metrics.observe_batch,
            max_batch_tokens=settings.max_batch_tokens,
            tokenizer_threads=settings.tokenizer_threads,
            version=settings.encoder_version,
            versions=versions,
            max_encoders=settings.max_encoders,
        )

    def register(self, server: grpc.aio.Server) -> None:
        embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(EmbeddingServicer(self.embedder), server)

    async def warm_up(self) -> None:
        await self.embedder.warm_up()

    async def close(self) -> None:
        await self.embedder.close()


def build_app(settings: EmbeddingSettings) -> EmbeddingApp:
    # The service's process only: a caller of load_encoder (training) keeps its own thread count.
    torch.set_num_threads(settings.torch_threads or default_torch_threads())
    return EmbeddingApp(settings, load_encoder(settings), VersionFolder(settings))
