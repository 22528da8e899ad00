"""The shared bootstrap: micro-batching, the error table, request ids, health and graceful shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from recsys.retriever.v1 import retriever_pb2
from services.common.batching import MicroBatcher
from services.common.clients import open_channel
from services.common.errors import OverloadedError
from services.common.logging import deadline_var, request_id_var
from services.common.server import REQUEST_ID_KEY, RunningServer
from services.common.settings import ServiceSettings
from services.common.structs import struct_to_dict
from services.embedding.app import EmbeddingApp
from services.embedding.config import EmbeddingSettings
from services.embedding.encoder import EncodedText
from services.gateway.backends import RetrieverClient


class SlowEncoder:
    """A fake encoder that records its batch sizes and can be slowed or made to fail."""

    model_id = "fake"
    dimension = 4
    max_tokens = 16
    device = "cpu"
    dtype = "float32"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[int] = []
        self.fail = False

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append(len(texts))
        return [EncodedText(np.ones(4, dtype=np.float32) / 2, len(t), False) for t in texts]


async def test_micro_batcher_joins_concurrent_requests() -> None:
    seen: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        seen.append(items)
        time.sleep(0.05)
        return [i * 10 for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, ThreadPoolExecutor(1), 8, 0.01, 100)
    results = await asyncio.gather(*(batcher.submit([n, n + 100]) for n in range(6)))
    assert results == [[n * 10, (n + 100) * 10] for n in range(6)]
    assert max(len(batch) for batch in seen) > 2, "requests shared a batch"
    assert all(len(batch) <= 8 for batch in seen)
    await batcher.close()


async def test_a_chunked_batch_lets_another_lane_run_between_its_chunks() -> None:
    ran: list[str] = []
    first_chunk_running, query_queued = threading.Event(), threading.Event()

    def run(items: list[str]) -> list[str]:
        ran.append(",".join(items))
        if items[0] == "b0":
            first_chunk_running.set()
            query_queued.wait(5)  # holds the model thread until the query waits behind this chunk
        return items

    class ModelThread(ThreadPoolExecutor):
        """One thread for both lanes, as the embedding service's; says when the query's batch is queued on it."""

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            future = super().submit(fn, *args, **kwargs)
            if args and args[0] == ["query"]:
                query_queued.set()
            return future

    model = ModelThread(1)
    bulk: MicroBatcher[str, str] = MicroBatcher(run, model, 64, 0.0, 100, chunk_items=2)
    interactive: MicroBatcher[str, str] = MicroBatcher(run, model, 64, 0.0, 100)
    bulk_done = asyncio.ensure_future(bulk.submit([f"b{n}" for n in range(6)]))
    await asyncio.to_thread(first_chunk_running.wait, 5)
    assert await interactive.submit(["query"]) == ["query"]
    assert await bulk_done == [f"b{n}" for n in range(6)]
    assert ran == ["b0,b1", "query", "b2,b3", "b4,b5"]
    await bulk.close()
    await interactive.close()


async def test_micro_batcher_waits_for_company_only_after_a_shared_batch() -> None:
    """A lone caller's request runs at once however long max_wait is; once requests have shared a batch, the
    next batch waits for more, and requests already queued always join."""
    seen: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        seen.append(items)
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(run, ThreadPoolExecutor(1), 2, 30.0, 100)
    for n in range(3):  # would take 30 s each if a lone request waited
        assert await asyncio.wait_for(batcher.submit([n]), 5) == [n]
    assert await asyncio.wait_for(asyncio.gather(batcher.submit([3]), batcher.submit([4])), 5) == [[3], [4]]
    assert seen[-1] == [3, 4]
    # After that shared batch, a request waits for company: one sent a little later joins it (and fills it).
    first = asyncio.create_task(batcher.submit([5]))
    await asyncio.sleep(0.05)
    assert not first.done()
    second = batcher.submit([6])
    assert await asyncio.wait_for(asyncio.gather(first, second), 5) == [[5], [6]]
    assert seen[-1] == [5, 6]
    await batcher.close()


async def test_micro_batcher_refuses_overload() -> None:
    release = threading.Event()
    batcher: MicroBatcher[int, int] = MicroBatcher(
        lambda items: release.wait() and items, ThreadPoolExecutor(1), 4, 0, 6
    )
    first = asyncio.create_task(batcher.submit([1, 2, 3, 4]))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(batcher.submit([5, 6, 7, 8, 9]))
    await asyncio.sleep(0.05)
    with pytest.raises(OverloadedError, match="retry"):
        await batcher.submit([10, 11])
    release.set()
    assert await first == [1, 2, 3, 4] and await second == [5, 6, 7, 8, 9]
    await batcher.close()


async def _start(encoder: SlowEncoder) -> tuple[RunningServer, grpc.aio.Channel]:
    app = EmbeddingApp(EmbeddingSettings(max_batch_wait_ms=0), encoder)
    running = RunningServer(ServiceSettings(port=0, drain_s=0.2, grace_period_s=5), app)
    port = await running.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return running, channel


async def test_health_is_not_serving_until_warm_and_during_shutdown() -> None:
    running, channel = await _start(SlowEncoder(delay_s=0.3))
    health = health_pb2_grpc.HealthStub(channel)
    name = "recsys.embedding.v1.EmbeddingService"
    check = health_pb2.HealthCheckRequest(service=name)
    assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.NOT_SERVING
    await running.warm_up()
    assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.SERVING
    stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
    in_flight = asyncio.ensure_future(stub.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=["drain me"])))
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(running.stop())
    await asyncio.sleep(0.05)
    assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.NOT_SERVING
    response = await in_flight
    assert len(response.embeddings) == 1, "the in-flight call finished during the drain"
    await stopping
    await channel.close()


async def test_unexpected_errors_are_internal_with_the_request_id() -> None:
    encoder = SlowEncoder()
    running, channel = await _start(encoder)
    await running.warm_up()
    encoder.fail = True
    stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=["x"]), metadata=((REQUEST_ID_KEY, "req-42"),))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "req-42" in (caught.value.details() or "")
    encoder.fail = False
    assert (await stub.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=["ok"]))).embeddings
    await channel.close()
    await running.stop()


async def test_micro_batcher_refuses_work_it_cannot_finish_before_the_deadline() -> None:
    def run(items: list[int]) -> list[int]:
        time.sleep(0.02 * len(items))  # 50 items/s
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(run, ThreadPoolExecutor(1), 4, 0, 1000)
    assert await batcher.submit([1, 2, 3, 4]) == [1, 2, 3, 4]  # measures the rate
    busy = asyncio.create_task(batcher.submit(list(range(40))))  # about 0.8 s of work queued
    await asyncio.sleep(0.01)
    token = deadline_var.set(time.monotonic() + 0.1)
    try:
        with pytest.raises(OverloadedError, match="more than the"):
            await batcher.submit([99])
    finally:
        deadline_var.reset(token)
    assert await busy == list(range(40))
    await batcher.close()


async def test_micro_batcher_drops_requests_whose_deadline_passed_while_queued() -> None:
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(items)
        time.sleep(0.2)
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(run, ThreadPoolExecutor(1), 1, 0, 1000)
    first = asyncio.create_task(batcher.submit([1]))
    await asyncio.sleep(0.01)
    token = deadline_var.set(time.monotonic() + 0.05)
    try:
        late = asyncio.create_task(batcher.submit([2]))
    finally:
        deadline_var.reset(token)
    with pytest.raises(OverloadedError, match="waited past its deadline"):
        await late
    assert await first == [1]
    assert calls == [[1]], "the expired request never reached the model"
    await batcher.close()


async def test_micro_batcher_closes_batches_by_cost() -> None:
    """With a cost per item (tokens), a batch closes at the cost budget before the count limit; a request whose
    cost alone passes the budget still runs, alone."""
    seen: list[list[int]] = []
    release = threading.Event()

    def run(items: list[int]) -> list[int]:
        release.wait()
        seen.append(items)
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(
        run, ThreadPoolExecutor(1), 100, 0.05, 1000, cost=lambda item: item, max_batch_cost=50
    )
    blocker = asyncio.create_task(batcher.submit([1]))
    await asyncio.sleep(0.02)
    requests = [[20], [20], [20], [70], [5, 5]]
    tasks = [asyncio.create_task(batcher.submit(r)) for r in requests]
    await asyncio.sleep(0.02)
    release.set()
    assert await asyncio.gather(*tasks) == requests
    await blocker
    batches = seen
    assert [item for batch in batches for item in batch] == [1, 20, 20, 20, 70, 5, 5], "arrival order kept"
    assert all(sum(batch) <= 50 or len(batch) == 1 for batch in batches), batches
    assert [70] in batches
    await batcher.close()


def test_struct_to_dict_reads_like_message_to_dict() -> None:
    struct = struct_pb2.Struct()
    struct.update(
        {"title": "Glue", "price": 12.5, "count": 3, "in_stock": True, "none": None, "tags": ["a", 1, {"b": [None]}]}
    )
    assert struct_to_dict(struct) == json_format.MessageToDict(struct)
    assert struct_to_dict(struct_pb2.Struct()) == {}


async def test_a_backend_call_carries_the_callers_request_id() -> None:
    """The gateway passes its caller's request id to each backend call as metadata (no client interceptor)."""
    seen: list[str] = []

    async def profile(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY, ""))
        return retriever_pb2.GetUserProfileResponse().SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "recsys.retriever.v1.RetrieverService", {"GetUserProfile": grpc.unary_unary_rpc_method_handler(profile)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        channel = open_channel(f"127.0.0.1:{port}", "recsys.retriever.v1.RetrieverService")
        client = RetrieverClient(channel, timeout_s=5)
        token = request_id_var.set("caller-id-7")
        try:
            await client.get_profile("", "u")
        finally:
            request_id_var.reset(token)
        await client.get_profile("", "u")  # outside a call: none to pass on
        await channel.close()
    finally:
        await server.stop(0)
    assert seen == ["caller-id-7", ""]


def test_the_event_loop_is_uvloop_unless_set_and_anything_else_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServiceSettings().event_loop == "uvloop"
    monkeypatch.setenv("EVENT_LOOP", "asyncio")
    assert ServiceSettings().event_loop == "asyncio"
    monkeypatch.setenv("EVENT_LOOP", "trio")
    with pytest.raises(ValidationError, match="uvloop"):
        ServiceSettings()
