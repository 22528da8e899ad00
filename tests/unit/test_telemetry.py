"""Metrics and tracing of the bootstrap, in process: the gateway with tracing on in front of real small backends
(preprocessor, retriever on the embedded engine, embedding with a fake encoder) and a fake ranker. One Recommend
is one trace across all five; /metrics shows the documented names moving."""

from __future__ import annotations

import hashlib
import re
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from recsys.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from recsys.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from services.common.logging import _add_trace_id
from services.common.server import RunningServer, ServiceApp
from services.common.settings import ServiceSettings
from services.embedding.app import EmbeddingApp
from services.embedding.config import EmbeddingSettings
from services.embedding.encoder import EncodedText
from services.gateway.app import GatewayApp
from services.gateway.config import GatewaySettings
from services.preprocessor.app import PreprocessorApp, build_preprocessor
from services.preprocessor.config import PreprocessorSettings
from services.retriever.app import RetrieverApp, open_store
from services.retriever.config import RetrieverSettings

DIM = 8


class HashEncoder:
    """A deterministic stand-in for the transformer: a unit vector from the text's hash."""

    model_id = "hash-encoder"
    dimension = DIM
    max_tokens = 16
    device = "cpu"
    dtype = "float32"

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        out = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
            out.append(EncodedText(v / np.linalg.norm(v), len(text.split()), False))
        return out


class FakeRanker(ranker_pb2_grpc.RankerServiceServicer):
    async def ScoreCandidates(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        results = [ranker_pb2.TaskScores(scores=[0.5] * len(task.candidate_matrix.item_ids)) for task in request.tasks]
        return ranker_pb2.ScoreCandidatesResponse(results=results, model_version="fake-1")

    async def SuggestCandidates(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return ranker_pb2.SuggestCandidatesResponse(model_version="fake-1")


class FakeRankerApp:
    service_name = "recsys.ranker.v1.RankerService"

    def register(self, server: grpc.aio.Server) -> None:
        ranker_pb2_grpc.add_RankerServiceServicer_to_server(FakeRanker(), server)

    async def warm_up(self) -> None:
        pass

    async def close(self) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def running(app: ServiceApp, metrics_port: int = 0) -> AsyncIterator[RunningServer]:
    server = RunningServer(ServiceSettings(port=0, drain_s=0, grace_period_s=1, metrics_port=metrics_port), app)
    await server.start()
    await server.warm_up()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    # The global provider can be set once per process; it is shut down at the end so later tests record nothing.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()


@pytest.fixture(scope="module")
async def suite(
    spans: InMemorySpanExporter, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[gateway_pb2_grpc.GatewayServiceStub, int]]:
    data_dir: Path = tmp_path_factory.mktemp("qdrant")
    retriever_settings = RetrieverSettings(data_dir=data_dir, dimension=DIM)
    metrics_port = free_port()
    async with AsyncExitStack() as stack:
        backends: dict[str, ServiceApp] = {
            "preprocessor": PreprocessorApp(PreprocessorSettings(), build_preprocessor(PreprocessorSettings())),
            "embedding": EmbeddingApp(EmbeddingSettings(max_batch_wait_ms=0), HashEncoder()),
            "retriever": RetrieverApp(retriever_settings, open_store(retriever_settings)),
            "ranker": FakeRankerApp(),
        }
        ports = {name: (await stack.enter_async_context(running(app))).port for name, app in backends.items()}
        settings = GatewaySettings.model_validate({f"{n}_address": f"127.0.0.1:{p}" for n, p in ports.items()})
        gateway = await stack.enter_async_context(running(GatewayApp(settings), metrics_port))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}"))
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        items = [
            gateway_pb2.CatalogItem(item_id=f"sku-{n}", title=f"wood glue number {n}", categories=["Adhesives"])
            for n in range(6)
        ]
        await stub.UpsertItems(gateway_pb2.UpsertItemsRequest(items=items))
        event = gateway_pb2.Event(user_id="u1", item_id="sku-1", type=gateway_pb2.EVENT_TYPE_PURCHASE)
        await stub.RecordEvents(gateway_pb2.RecordEventsRequest(events=[event]))
        yield stub, metrics_port


def scrape(port: int) -> dict[str, float]:
    """`name{labels}` -> value of every sample on the /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of a family's samples whose labels include `labels`."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for key, value in samples.items()
        if re.fullmatch(rf"{name}(\{{.*\}})?", key) and all(w in key for w in wanted)
    )


async def test_one_recommend_is_one_trace_across_the_services(
    suite: tuple[gateway_pb2_grpc.GatewayServiceStub, int], spans: InMemorySpanExporter
) -> None:
    stub, _ = suite
    spans.clear()
    response = await stub.Recommend(gateway_pb2.RecommendRequest(user_id="u1", k=3, query="glue"))
    assert response.items and not response.degraded
    finished: tuple[ReadableSpan, ...] = spans.get_finished_spans()
    assert len({s.context.trace_id for s in finished if s.context is not None}) == 1, "one trace"
    servers = {s.name.split("/")[0] for s in finished if s.kind == trace.SpanKind.SERVER}
    assert servers == {
        "recsys.gateway.v1.GatewayService",
        "recsys.preprocessor.v1.PreprocessorService",
        "recsys.embedding.v1.EmbeddingService",
        "recsys.retriever.v1.RetrieverService",
        "recsys.ranker.v1.RankerService",
    }
    (root,) = [s for s in finished if s.parent is None]
    assert root.name == "recsys.gateway.v1.GatewayService/Recommend"
    clients = [s for s in finished if s.kind == trace.SpanKind.CLIENT]
    assert root.context is not None and clients
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in clients)
    for server in (s for s in finished if s.kind == trace.SpanKind.SERVER and s is not root):
        assert server.parent is not None and server.parent.span_id in {c.context.span_id for c in clients if c.context}
        assert server.attributes is not None and server.attributes["rpc.grpc.status_code"] == 0


async def test_failed_calls_carry_their_status(
    suite: tuple[gateway_pb2_grpc.GatewayServiceStub, int], spans: InMemorySpanExporter
) -> None:
    stub, _ = suite
    spans.clear()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Recommend(gateway_pb2.RecommendRequest(user_id="u1", k=0))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The earlier test's impression may be written after its answer (off the path): look at this call only.
    (span,) = [s for s in spans.get_finished_spans() if s.name.endswith("GatewayService/Recommend")]
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 3
    assert span.status.is_ok, "a caller's mistake is not a server error"


def test_log_lines_carry_the_trace_id(spans: InMemorySpanExporter) -> None:
    assert "trace_id" not in _add_trace_id(None, "info", {})
    with trace.get_tracer("test").start_as_current_span("work") as span:
        event = _add_trace_id(None, "info", {})
    assert event["trace_id"] == format(span.get_span_context().trace_id, "032x")


async def test_metrics_move_with_requests(suite: tuple[gateway_pb2_grpc.GatewayServiceStub, int]) -> None:
    stub, port = suite
    before = scrape(port)
    await stub.Recommend(gateway_pb2.RecommendRequest(user_id="u1", k=3, query="glue"))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Recommend(gateway_pb2.RecommendRequest(user_id="u1", k=0))
    after = scrape(port)
    recommend = {"grpc_service": "recsys.gateway.v1.GatewayService", "grpc_method": "Recommend"}
    for name, labels in [
        ("recsys_grpc_server_requests_total", {**recommend, "grpc_code": "OK"}),
        ("recsys_grpc_server_requests_total", {**recommend, "grpc_code": "INVALID_ARGUMENT"}),
        ("recsys_grpc_server_request_seconds_count", recommend),
        ("recsys_grpc_server_requests_total", {"grpc_method": "ScoreCandidates"}),
        ("recsys_embedding_batch_size_count", {}),
        ("recsys_embedding_queue_wait_seconds_count", {}),
        ("recsys_retriever_search_seconds_count", {}),
    ]:
        assert total(after, name, **labels) > total(before, name, **labels), (name, labels)
    assert total(after, "recsys_grpc_server_in_flight_requests", **recommend) == 0
    assert total(after, "recsys_retriever_items") == 6
    assert total(after, "recsys_embedding_model_info", model_id="hash-encoder") == 1
