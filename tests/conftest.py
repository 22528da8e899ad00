"""Test-wide set-up: offline model loading, data paths, and an in-process server helper."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from services.common.server import RunningServer, ServiceApp
from services.common.settings import ServiceSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("RECSYS_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))
SCIENTIFIC = DATA_ROOT / "amazon-scientific"


@asynccontextmanager
async def serving(app: ServiceApp, settings: ServiceSettings | None = None) -> AsyncIterator[grpc.aio.Channel]:
    """Runs `app` on an ephemeral loopback port through the shared bootstrap; yields a channel to it."""
    running = RunningServer(settings or ServiceSettings(port=0, drain_s=0, grace_period_s=1), app)
    port = await running.start()
    await running.warm_up()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await running.stop()
