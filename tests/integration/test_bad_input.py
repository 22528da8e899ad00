"""Bad input through the real services: a clear status with a message that says what to fix, nothing stored,
and every service still serving afterwards."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from recsys.preprocessor.v1 import preprocessor_pb2, preprocessor_pb2_grpc
from recsys.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.cli.suite import FULL_NAMES
from tests.integration.conftest import RunningSuite

TEN_MB = "x" * (10 * 1024 * 1024)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

GATEWAY_CASES: list[tuple[str, str, Any, grpc.StatusCode, str]] = [
    ("empty events", "RecordEvents", pb.RecordEventsRequest(), INVALID, "events is empty"),
    ("empty items", "UpsertItems", pb.UpsertItemsRequest(), INVALID, "items is empty"),
    (
        "10 MB description",
        "UpsertItems",
        pb.UpsertItemsRequest(items=[pb.CatalogItem(item_id="big", title="Big", description=TEN_MB)]),
        INVALID,
        "shorten it",
    ),
    ("10 MB query", "SearchItems", pb.SearchItemsRequest(query=TEN_MB, k=5), INVALID, "shorten it"),
    ("k = 0", "Recommend", pb.RecommendRequest(user_id="u", k=0), INVALID, "k is 0"),
    ("k = 100000", "Recommend", pb.RecommendRequest(user_id="u", k=100000), INVALID, "k is 100000"),
    ("blank user id", "Recommend", pb.RecommendRequest(user_id="  ", k=5), INVALID, "user_id is empty"),
    ("bad catalog", "Recommend", pb.RecommendRequest(k=5, catalog="A B"), INVALID, "catalog"),
    ("diversity > 1", "Recommend", pb.RecommendRequest(k=5, diversity=1.5), INVALID, "diversity"),
    (
        "boost without target",
        "Recommend",
        pb.RecommendRequest(k=5, boosts=[pb.Boost(weight=1.0)]),
        INVALID,
        "boosts[0] needs either a category",
    ),
    ("bad page token", "Recommend", pb.RecommendRequest(user_id="u", k=5, page_token="zzz"), INVALID, "page_token"),
    (
        "unknown filter field",
        "SearchItems",
        pb.SearchItemsRequest(query="glue", k=5, filter=pb.Filter(flags=[pb.FlagFilter(field="colour", value=True)])),
        INVALID,
        "colour",
    ),
    (
        "range on a keyword field",
        "SearchItems",
        pb.SearchItemsRequest(query="glue", k=5, filter=pb.Filter(ranges=[pb.RangeFilter(field="brand", gte=1)])),
        INVALID,
        "brand",
    ),
    (
        "unknown item",
        "GetSimilarItems",
        pb.GetSimilarItemsRequest(item_id="no-such-item", k=5),
        NOT_FOUND,
        "no-such-item",
    ),
    (
        "event on an unknown item",
        "RecordEvents",
        pb.RecordEventsRequest(events=[pb.Event(user_id="ghost-user", item_id="no-such-item")]),
        NOT_FOUND,
        "no-such-item",
    ),
    (
        "event 12 hours ahead of the clock",  # accepted before (up to a day ahead) while the message said "up to now"
        "RecordEvents",
        pb.RecordEventsRequest(
            events=[pb.Event(user_id="u", item_id="no-such-item", time=Timestamp(seconds=int(time.time()) + 43_200))]
        ),
        INVALID,
        "hours in the future; times up to 300 seconds ahead of the server's clock are accepted",
    ),
    ("unknown user", "DeleteUser", pb.DeleteUserRequest(user_id="never-seen"), NOT_FOUND, "never-seen"),
    ("empty query", "SearchItems", pb.SearchItemsRequest(query="  ", k=5), INVALID, "query is empty"),
    (
        "markup-only title",
        "UpsertItems",
        pb.UpsertItemsRequest(items=[pb.CatalogItem(item_id="markup-only", title="<p><br/></p>")]),
        INVALID,
        "items[0].title has no text after cleaning",
    ),
    (
        "zero-width user id",
        "Recommend",
        pb.RecommendRequest(user_id="\u200b\u200b", k=5),
        INVALID,
        "user_id is empty or has only invisible characters",
    ),
    ("emoji-only query", "SearchItems", pb.SearchItemsRequest(query="🎸🤘", k=5), INVALID, "no letters or digits"),
    (
        "emoji-only query in Recommend",
        "Recommend",
        pb.RecommendRequest(user_id="u", query="🎸", k=5),
        INVALID,
        "no letters or digits",
    ),
    (
        "catalog that does not exist",
        "SearchItems",
        pb.SearchItemsRequest(query="glue", k=5, catalog="no-such-catalog"),
        NOT_FOUND,
        "catalog 'no-such-catalog' does not exist",
    ),
    (
        "recommend from a catalog that does not exist",
        "Recommend",
        pb.RecommendRequest(user_id="u", k=5, catalog="no-such-catalog"),
        NOT_FOUND,
        "UpsertItems",
    ),
]


def _check(call: Callable[..., Any], request: Any, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    assert caught.value.code() == code, caught.value.details()
    assert message in (caught.value.details() or ""), caught.value.details()


@pytest.mark.parametrize(
    ("rpc", "request_", "code", "message"), [c[1:] for c in GATEWAY_CASES], ids=[c[0] for c in GATEWAY_CASES]
)
def test_gateway_rejects(
    gateway_channel: grpc.Channel, rpc: str, request_: Any, code: grpc.StatusCode, message: str
) -> None:
    stub = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
    _check(getattr(stub, rpc), request_, code, message)


def test_a_page_token_only_serves_its_own_request(gateway_channel: grpc.Channel) -> None:
    stub = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
    first = stub.Recommend(pb.RecommendRequest(k=3), timeout=30)
    assert first.next_page_token
    other = pb.RecommendRequest(k=3, query="glue", page_token=first.next_page_token)
    _check(stub.Recommend, other, INVALID, "page_token belongs to a different request")
    same = stub.Recommend(pb.RecommendRequest(k=3, page_token=first.next_page_token), timeout=30)
    assert same.page == 2 and same.recommendation_id == first.recommendation_id


def test_a_rejected_event_batch_stores_nothing(suite: RunningSuite, gateway_channel: grpc.Channel) -> None:
    stub = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
    known = suite.dataset.items[0].item_id
    batch = pb.RecordEventsRequest(
        events=[pb.Event(user_id="half-batch", item_id=known), pb.Event(user_id="half-batch", item_id="missing")]
    )
    _check(stub.RecordEvents, batch, NOT_FOUND, "missing")
    _check(stub.DeleteUser, pb.DeleteUserRequest(user_id="half-batch"), NOT_FOUND, "half-batch")


def test_an_event_naming_a_recommendation_never_issued_is_stored_and_named(
    suite: RunningSuite, gateway_channel: grpc.Channel
) -> None:
    stub = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
    user = "unattributed-user"
    shown = stub.Recommend(pb.RecommendRequest(user_id=user, k=2), timeout=30)
    events = [
        pb.Event(user_id=user, item_id=shown.items[0].item_id, recommendation_id=shown.recommendation_id),
        pb.Event(user_id=user, item_id=suite.dataset.items[0].item_id, recommendation_id="never-issued"),
    ]
    response = stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=30)
    # The retriever names the id no Recommend gave and the gateway passes it on: a wiring bug is visible.
    assert response.recorded == 2
    assert list(response.unknown_recommendation_ids) == ["never-issued"]


def test_backends_reject(suite: RunningSuite) -> None:
    with grpc.insecure_channel(suite.address("embedding")) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        _check(stub.EmbedTexts, embedding_pb2.EmbedTextsRequest(), INVALID, "texts is empty")
        _check(stub.EmbedTexts, embedding_pb2.EmbedTextsRequest(texts=[TEN_MB]), INVALID, "shorten it")
    with grpc.insecure_channel(suite.address("preprocessor")) as channel:
        stub = preprocessor_pb2_grpc.PreprocessorServiceStub(channel)
        _check(stub.CleanTexts, preprocessor_pb2.CleanTextsRequest(), INVALID, "texts is empty")
        # The preprocessor cuts text to the budget: a long text comes back cut, and says so. Past
        # PREPROCESSOR_MAX_TEXT_CHARS it refuses at once (a 10 MB text held a cleaning thread for seconds).
        (cut,) = stub.CleanTexts(preprocessor_pb2.CleanTextsRequest(texts=["word " * 20_000]), timeout=30).results
        assert cut.truncated and cut.token_count <= 254
        _check(stub.CleanTexts, preprocessor_pb2.CleanTextsRequest(texts=["word " * 2_000_000]), INVALID, "shorten it")
    with grpc.insecure_channel(suite.address("retriever")) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        wrong_size = retriever_pb2.SearchQuery(vector=[0.1] * 10, limit=5)
        _check(stub.SearchItems, retriever_pb2.SearchItemsRequest(queries=[wrong_size]), INVALID, "384")
        nan = retriever_pb2.Item(item_id="nan-item", vector=[float("nan")] * 384)
        _check(stub.UpsertItems, retriever_pb2.UpsertItemsRequest(items=[nan]), INVALID, "nan-item")
        _check(stub.GetItems, retriever_pb2.GetItemsRequest(item_ids=["nan-item"]), NOT_FOUND, "nan-item")
        # The retriever checks events as the gateway does (all of these were stored before).
        for event, message in (
            (retriever_pb2.UserEvent(item_id="x", event_type="view", timestamp=-1e12, weight=1), "not Unix seconds"),
            (retriever_pb2.UserEvent(item_id="x", event_type="view", timestamp=1e300, weight=1), "in the future"),
            (retriever_pb2.UserEvent(item_id="x", event_type="bogus", timestamp=1, weight=1), "is not one of view"),
            (retriever_pb2.UserEvent(item_id="x", event_type="view", timestamp=1, weight=-5), "above 0"),
        ):
            request = retriever_pb2.AppendUserEventsRequest(user_id="checked-user", events=[event])
            _check(stub.AppendUserEvents, request, INVALID, message)
    with grpc.insecure_channel(suite.address("ranker")) as channel:
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        task = ranker_pb2.ScoringTask(candidates=[ranker_pb2.ItemVector(item_id="a", vector=[0.5] * 7)])
        _check(stub.ScoreCandidates, ranker_pb2.ScoreCandidatesRequest(tasks=[task]), INVALID, "expects 384")


def test_every_service_still_serves(suite: RunningSuite) -> None:
    for name, full_name in FULL_NAMES.items():
        with grpc.insecure_channel(suite.address(name)) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=full_name), timeout=5
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING, name
        assert suite.pids[name]
