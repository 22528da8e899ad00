"""The scale-out guarantees through the service (issue 16): two retriever replicas on one store answer
interleaved, retried AppendUserEvents calls and every acknowledged event counts exactly once; the gateway's
retry of an AppendUserEvents whose first answer missed its deadline counts once.

Which replicas share a store depends on the engine: the embedded engine and qdrant-client's local mode lock
their folder to one process, so here the two replicas are two servers in one process with stores of their own
over one local-mode engine. With RECSYS_TEST_QDRANT_URL set, the same runs with two retriever processes
on that Qdrant server."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from qdrant_client import QdrantClient

from recsys.retriever.v1 import retriever_pb2 as pb
from recsys.retriever.v1 import retriever_pb2_grpc
from services.gateway.backends import RetrieverClient
from services.gateway.model import HistoryEvent
from services.retriever.app import SERVICE_NAME, RetrieverApp, open_store
from services.retriever.client_store import ClientVectorStore
from services.retriever.config import RetrieverSettings
from services.retriever.eventlog import oldest_first
from services.retriever.profiles import history_profile
from services.retriever.servicer import RetrieverServicer
from services.retriever.store import UserEvent
from tests.conftest import REPO_ROOT, serving

DIM = 8
USERS = [f"user-{n}" for n in range(5)]
ITEMS = [f"item-{n}" for n in range(20)]
WRITERS = 8
CALLS_PER_WRITER = 20
HALF_LIFE = 20.0
QDRANT_URL = os.environ.get("RECSYS_TEST_QDRANT_URL", "")
Stub = retriever_pb2_grpc.RetrieverServiceStub


def _vector(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).tolist()


async def _write_and_check(stubs: list[Stub], catalog: str) -> None:
    """8 concurrent writers alternate between the replicas, repeating 10% of their calls on the other one."""
    items = [pb.Item(item_id=i, vector=_vector(n)) for n, i in enumerate(ITEMS)]
    await stubs[0].UpsertItems(pb.UpsertItemsRequest(items=items, catalog=catalog))
    acknowledged: list[tuple[str, pb.UserEvent]] = []

    async def writer(number: int) -> None:
        rng = random.Random(number)
        for call in range(CALLS_PER_WRITER):
            user = rng.choice(USERS)
            events = [
                pb.UserEvent(
                    item_id=rng.choice(ITEMS),
                    event_type=rng.choice(("view", "click", "purchase")),
                    timestamp=1_700_000_000.0 + number * 1000 + call + n / 10,
                    weight=2.0,
                    event_id=f"w{number}-c{call}-e{n}",
                )
                for n in range(rng.randint(1, 3))
            ]
            request = pb.AppendUserEventsRequest(user_id=user, events=events, catalog=catalog)
            await stubs[(number + call) % 2].AppendUserEvents(request)
            if rng.random() < 0.1:
                await stubs[(number + call + 1) % 2].AppendUserEvents(request)
            acknowledged.extend((user, e) for e in events)

    await asyncio.gather(*(writer(n) for n in range(WRITERS)))
    vectors = {i.item_id: tuple(i.vector) for i in items}
    for user in USERS:
        expected = Counter(e.event_id for u, e in acknowledged if u == user)
        history = oldest_first(
            UserEvent(e.item_id, e.event_type, e.timestamp, e.weight, event_id=e.event_id)
            for u, e in acknowledged
            if u == user
        )
        from_scratch = history_profile(history, vectors, HALF_LIFE)
        assert from_scratch is not None
        for stub in stubs:  # read-your-writes through either replica
            profile = (await stub.GetUserProfile(pb.GetUserProfileRequest(user_id=user, catalog=catalog))).profile
            assert Counter(e.event_id for e in profile.events) == expected
            assert np.allclose(profile.vector, from_scratch, atol=1e-5), user
    found = await stubs[1].GetItems(pb.GetItemsRequest(item_ids=ITEMS, catalog=catalog))
    popularity = {i.item_id: int(i.payload["popularity"]) for i in found.items}
    assert popularity == {i: sum(1 for _, e in acknowledged if e.item_id == i) for i in ITEMS}


async def test_two_replicas_in_one_process_on_one_local_engine(tmp_path: Path) -> None:
    client = QdrantClient(location=":memory:", force_disable_check_same_thread=True)
    settings = RetrieverSettings(data_dir=tmp_path, dimension=DIM, max_history=1000, half_life_events=HALF_LIFE)
    async with AsyncExitStack() as stack:
        stubs = []
        for _ in range(2):
            store = ClientVectorStore(client, dimension=DIM, max_history=1000, half_life_events=HALF_LIFE)
            channel = await stack.enter_async_context(serving(RetrieverApp(settings, store)))
            stubs.append(Stub(channel))
        await _write_and_check(stubs, "")
    client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _retriever_process(log: Path) -> Iterator[int]:
    port = _free_port()
    env = {
        **os.environ,
        "RETRIEVER_PORT": str(port),
        "RETRIEVER_METRICS_PORT": "0",
        "RETRIEVER_QDRANT_URL": QDRANT_URL,
        "RETRIEVER_DIMENSION": str(DIM),
        "RETRIEVER_MAX_HISTORY": "1000",
        "RETRIEVER_HALF_LIFE_EVENTS": str(HALF_LIFE),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.retriever"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                deadline = time.monotonic() + 60
                while True:
                    assert process.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    try:
                        answer = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1)
                        if answer.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        time.sleep(0.2)
            yield port
        finally:
            process.terminate()
            process.wait(timeout=20)


@pytest.mark.qdrant_server
@pytest.mark.skipif(not QDRANT_URL, reason="set RECSYS_TEST_QDRANT_URL to run two retriever processes on a server")
async def test_two_retriever_processes_on_one_qdrant_server(tmp_path: Path) -> None:
    catalog = f"replicas-{uuid.uuid4().hex[:8]}"  # collections of its own on the shared server
    with _retriever_process(tmp_path / "a.log") as first, _retriever_process(tmp_path / "b.log") as second:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{first}") as a,
            grpc.aio.insecure_channel(f"127.0.0.1:{second}") as b,
        ):
            await _write_and_check([Stub(a), Stub(b)], catalog)
    server = QdrantClient(url=QDRANT_URL)
    for kind in ("items", "users", "feedback", "events"):
        server.delete_collection(f"{catalog}__{kind}")
    server.close()


class SlowFirstAnswer(RetrieverServicer):
    """Stores the first AppendUserEvents as usual, then answers it too late for the caller's deadline."""

    def __init__(self, app: RetrieverApp, delay_s: float) -> None:
        super().__init__(app.catalogs)
        self.delay_s = delay_s
        self.calls = 0

    async def AppendUserEvents(
        self, request: pb.AppendUserEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AppendUserEventsResponse:
        self.calls += 1
        response = await super().AppendUserEvents(request, context)
        if self.calls == 1:
            await asyncio.sleep(self.delay_s)
        return response


class SlowFirstApp(RetrieverApp):
    def register(self, server: grpc.aio.Server) -> None:
        self.servicer = SlowFirstAnswer(self, delay_s=2.0)
        retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(self.servicer, server)


@pytest.fixture
async def slow_first(tmp_path: Path) -> AsyncIterator[tuple[SlowFirstApp, grpc.aio.Channel]]:
    settings = RetrieverSettings(data_dir=tmp_path, dimension=DIM)
    app = SlowFirstApp(settings, open_store(settings))
    async with serving(app) as channel:
        yield app, channel


async def test_gateway_retry_after_deadline_exceeded_counts_once(
    slow_first: tuple[SlowFirstApp, grpc.aio.Channel],
) -> None:
    app, channel = slow_first
    stub = Stub(channel)
    await stub.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(item_id="a", vector=_vector(1))]))
    client = RetrieverClient(channel, timeout_s=1.0)
    event = HistoryEvent("a", "purchase", 1_700_000_000.0, 4.0, event_id="order-17")
    await client.append_events("", "u", [event])  # the first try times out; the retry answers
    assert app.servicer.calls == 2
    profile = (await stub.GetUserProfile(pb.GetUserProfileRequest(user_id="u"))).profile
    assert [e.event_id for e in profile.events] == ["order-17"]
    item = (await stub.GetItems(pb.GetItemsRequest(item_ids=["a"]))).items[0]
    assert item.payload["popularity"] == 1
