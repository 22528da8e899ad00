"""A retriever process killed with SIGKILL right after acknowledging writes loses none of them: a restart on
the same folder serves every acknowledged item, event and popularity count."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from recsys.retriever.v1 import retriever_pb2 as pb
from recsys.retriever.v1 import retriever_pb2_grpc

DIM = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(data_dir: Path, port: int, sync_writes: bool) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RETRIEVER_PORT": str(port),
        "RETRIEVER_DATA_DIR": str(data_dir),
        "RETRIEVER_DIMENSION": str(DIM),
        "RETRIEVER_SYNC_WRITES": str(sync_writes).lower(),
        "RETRIEVER_LOG_LEVEL": "warning",
    }
    return subprocess.Popen([sys.executable, "-m", "services.retriever"], env=env, stderr=subprocess.DEVNULL)


async def _ready(stub: retriever_pb2_grpc.RetrieverServiceStub) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            await stub.GetCollectionInfo(pb.GetCollectionInfoRequest(), timeout=1)
            return
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("sync_writes", [False, True], ids=["wal", "fsync"])
async def test_sigkill_right_after_acknowledgements_loses_nothing(tmp_path: Path, sync_writes: bool) -> None:
    port = _free_port()
    rng = np.random.default_rng(1)
    process = _start(tmp_path, port, sync_writes)
    acked_items: list[str] = []
    acked_events: dict[str, int] = {}
    events = 24 if sync_writes else 60
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
            await _ready(stub)

            async def upsert(n: int) -> None:
                item = pb.Item(item_id=f"i{n}", vector=rng.normal(size=DIM).tolist())
                await stub.UpsertItems(pb.UpsertItemsRequest(items=[item]), timeout=60)
                acked_items.append(f"i{n}")

            async def append(n: int) -> None:
                event = pb.UserEvent(item_id=f"i{n % 20}", event_type="view", timestamp=n, weight=1)
                await stub.AppendUserEvents(pb.AppendUserEventsRequest(user_id=f"u{n % 7}", events=[event]), timeout=60)
                acked_events[f"u{n % 7}"] = acked_events.get(f"u{n % 7}", 0) + 1

            await asyncio.gather(*(upsert(n) for n in range(20)))
            # Concurrent writers; the kill lands the moment the last acknowledgement arrives. Fewer with fsync,
            # where every group of writes waits ~0.2 s for its flush on this machine's disk.
            await asyncio.gather(*(append(n) for n in range(events)), *(upsert(n) for n in range(20, 20 + events)))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

        process = _start(tmp_path, port, sync_writes)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
            await _ready(stub)
            found = await stub.GetItems(pb.GetItemsRequest(item_ids=acked_items), timeout=10)
            assert sorted(i.item_id for i in found.items) == sorted(acked_items)
            total = 0
            for user_id, count in acked_events.items():
                profile = await stub.GetUserProfile(pb.GetUserProfileRequest(user_id=user_id), timeout=10)
                assert len(profile.profile.events) == count
                total += count
            popular = await stub.ListPopularItems(pb.ListPopularItemsRequest(limit=100), timeout=10)
            assert sum(int(i.score) for i in popular.items) == total == events
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
