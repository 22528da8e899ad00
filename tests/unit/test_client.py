"""recsys_client's call conventions against a scripted gateway on a loopback port: retries only where a repeat
is safe, the deadline, the request id and the token on every call, typed errors, and the dataclasses it
builds. The real suite is in tests/integration/test_client.py."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from recsys_client import (
    AsyncRecsysClient,
    Boost,
    Event,
    Filter,
    Pin,
    RecordResult,
    RecsysClient,
    ResourceExhaustedError,
    UnavailableError,
)


class ScriptedGateway(gateway_pb2_grpc.GatewayServiceServicer):
    """Fails the first `failures` calls of each method with UNAVAILABLE, then answers; keeps what it saw."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.metadata: list[dict[str, str]] = []
        self.deadlines: list[float | None] = []
        self.requests: list[Any] = []

    def _arrive(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        self.metadata.append(dict(context.invocation_metadata()))
        self.deadlines.append(context.time_remaining())
        self.requests.append(request)
        if self.calls[method] <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "backend restarting")

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        self._arrive("Recommend", request, context)
        item = pb.RecommendedItem(
            item_id="a",
            score=0.5,
            reason="like b",
            title="A",
            categories=["x", "y"],
            explanation=pb.Explanation(stage_scores={"final": 1.5}, evidence="b"),
        )
        return pb.RecommendResponse(
            items=[item],
            strategy="personalised",
            recommendation_id="r1",
            page=1,
            stage_ms={"total": 3.0},
            warnings=["max_per_category had no effect"],
        )

    def GetSimilarItems(
        self, request: pb.GetSimilarItemsRequest, context: grpc.ServicerContext
    ) -> pb.GetSimilarItemsResponse:
        self._arrive("GetSimilarItems", request, context)
        return pb.GetSimilarItemsResponse(
            items=[pb.RecommendedItem(item_id="b", score=0.9)], warnings=["categories_any left no item"]
        )

    def RecordEvents(self, request: pb.RecordEventsRequest, context: grpc.ServicerContext) -> pb.RecordEventsResponse:
        self._arrive("RecordEvents", request, context)
        unknown = sorted({e.recommendation_id for e in request.events if e.recommendation_id not in ("", "r1")})
        return pb.RecordEventsResponse(recorded=len(request.events), unknown_recommendation_ids=unknown)

    def DeleteUser(self, request: pb.DeleteUserRequest, context: grpc.ServicerContext) -> pb.DeleteUserResponse:
        self._arrive("DeleteUser", request, context)
        return pb.DeleteUserResponse()

    def SearchItems(self, request: pb.SearchItemsRequest, context: grpc.ServicerContext) -> pb.SearchItemsResponse:
        self._arrive("SearchItems", request, context)
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "admission limit reached")
        raise AssertionError("unreachable")


@pytest.fixture
def gateway() -> Iterator[tuple[ScriptedGateway, str]]:
    servicer = ScriptedGateway(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_a_read_is_retried_and_carries_deadline_request_id_and_token(gateway: tuple[ScriptedGateway, str]) -> None:
    servicer, address = gateway
    with RecsysClient(address, token="s3cret", deadline=5) as client:
        result = client.recommend("u1", k=1, explain=True, request_id="rid-1")
    assert servicer.calls["Recommend"] == 3, "two UNAVAILABLE answers, then the third attempt"
    assert {m["x-request-id"] for m in servicer.metadata} == {"rid-1"}
    assert {m["authorization"] for m in servicer.metadata} == {"Bearer s3cret"}
    assert all(d is not None and 0 < d <= 5 for d in servicer.deadlines)
    item = result.items[0]
    assert (item.item_id, item.categories, result.stage_ms) == ("a", ("x", "y"), {"total": 3.0})
    assert item.explanation is not None and item.explanation.stage_scores == {"final": 1.5}


def test_events_are_retried_under_the_same_event_ids(gateway: tuple[ScriptedGateway, str]) -> None:
    servicer, address = gateway
    when = datetime(2026, 1, 1, tzinfo=UTC)
    with RecsysClient(address) as client:
        recorded = client.record_events([Event("u1", "a", "purchase", time=when), Event("u1", "b", event_id="mine")])
    assert recorded.recorded == 2 and servicer.calls["RecordEvents"] == 3
    ids = [[event.event_id for event in request.events] for request in servicer.requests]
    assert ids[0] == ids[1] == ids[2] and ids[0][1] == "mine" and len(ids[0][0]) == 32, "one id for every attempt"
    assert ids[0][0] != ids[0][1]


def test_warnings_and_unknown_recommendation_ids_reach_the_results(gateway: tuple[ScriptedGateway, str]) -> None:
    servicer, address = gateway
    servicer.failures = 0
    with RecsysClient(address) as client:
        assert client.recommend("u1").warnings == ("max_per_category had no effect",)
        similar = client.similar_items("a")
        assert [i.item_id for i in similar.items] == ["b"] and similar.warnings == ("categories_any left no item",)
        events = [Event("u1", "a", recommendation_id="r1"), Event("u1", "b", recommendation_id="never-issued")]
        assert client.record_events(events) == RecordResult(recorded=2, unknown_recommendation_ids=("never-issued",))


def test_deletion_and_overload_are_not_retried_and_errors_are_typed(gateway: tuple[ScriptedGateway, str]) -> None:
    servicer, address = gateway
    with RecsysClient(address) as client:
        with pytest.raises(UnavailableError) as raised:
            client.delete_user("u1")
        assert servicer.calls["DeleteUser"] == 1, "a repeat after a lost answer would say NOT_FOUND"
        assert raised.value.message == "backend restarting" and len(raised.value.request_id) == 32
        assert "authorization" not in servicer.metadata[0]
        servicer.failures = 0
        with pytest.raises(ResourceExhaustedError):
            client.search("glue")
    assert servicer.calls["SearchItems"] == 1, "overload is not retried"


def test_options_become_the_request(gateway: tuple[ScriptedGateway, str]) -> None:
    servicer, address = gateway
    servicer.failures = 0
    with RecsysClient(address) as client:
        client.recommend(
            context_item_ids=["b"],
            filter=Filter(categories_any=["x"], keywords={"brand": ["3M"]}, ranges={"price": (None, 20.0)}),
            boosts=[Boost(weight=1.5, field="brand", value="3M")],
            pins=[Pin("c", 1)],
            exclude_seen=False,
            diversity=0.5,
        )
    request: pb.RecommendRequest = servicer.requests[0]
    assert list(request.context_item_ids) == ["b"] and request.HasField("exclude_seen") and not request.exclude_seen
    assert request.filter.ranges[0].lte == 20.0 and not request.filter.ranges[0].HasField("gte")
    assert request.filter.keywords[0].any_of == ["3M"] and request.boosts[0].weight == 1.5
    assert request.pins[0].item_id == "c" and request.diversity == 0.5


async def test_the_asyncio_client_retries_reads(gateway: tuple[ScriptedGateway, str]) -> None:
    servicer, address = gateway
    async with AsyncRecsysClient(address) as client:
        result = await client.recommend("u1")
        with pytest.raises(UnavailableError):
            await client.delete_user("u1")
    assert result.recommendation_id == "r1" and servicer.calls == {"Recommend": 3, "DeleteUser": 1}
