"""Personal data against the real suite: no log line of any service holds a user's text or id, and DeleteUser
leaves no trace (events, profile, popularity counts, the gateway's popular cache)."""

from __future__ import annotations

import time

import grpc
import pytest

from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.cli.suite import SERVICES
from tests.integration.conftest import RunningSuite

USER = "canary-user-5f3a"
QUERY = "waterproof glue for jo.canary@example.com, call +1 415 555 0199"
ITEMS = ["privacy-item-1", "privacy-item-2"]


def _popularity(channel: grpc.Channel) -> dict[str, float]:
    stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
    found = stub.GetItems(retriever_pb2.GetItemsRequest(item_ids=ITEMS), timeout=10)
    return {i.item_id: i.payload["popularity"] for i in found.items}


def _impressions_once_written(
    retriever: retriever_pb2_grpc.RetrieverServiceStub, recommendation_id: str
) -> retriever_pb2.GetImpressionsResponse:
    """The gateway records a page after answering it (services/gateway/impressions.py): wait for it."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return retriever.GetImpressions(
                retriever_pb2.GetImpressionsRequest(recommendation_id=recommendation_id), timeout=10
            )
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:  # type: ignore[attr-defined]
                raise
            time.sleep(0.05)


def test_delete_user_removes_every_trace_and_logs_hold_none(suite: RunningSuite, gateway_channel: grpc.Channel) -> None:
    gateway = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
    items = [pb.CatalogItem(item_id=i, title=f"Privacy test glue {n}") for n, i in enumerate(ITEMS)]
    gateway.UpsertItems(pb.UpsertItemsRequest(items=items), timeout=60)
    with grpc.insecure_channel(suite.address("retriever")) as retriever_channel:
        before = _popularity(retriever_channel)
        events = [pb.Event(user_id=USER, item_id=i, type=pb.EVENT_TYPE_PURCHASE) for i in [*ITEMS, ITEMS[0]]]
        gateway.RecordEvents(pb.RecordEventsRequest(events=events), timeout=30)
        assert _popularity(retriever_channel) == {ITEMS[0]: before[ITEMS[0]] + 2, ITEMS[1]: before[ITEMS[1]] + 1}
        personal = gateway.Recommend(pb.RecommendRequest(user_id=USER, k=5, query=QUERY), timeout=30)
        assert personal.strategy == "personalised+query"
        retriever = retriever_pb2_grpc.RetrieverServiceStub(retriever_channel)
        shown = _impressions_once_written(retriever, personal.recommendation_id)
        assert shown.impressions[0].user_id == USER
        gateway.SearchItems(pb.SearchItemsRequest(query=QUERY, k=3), timeout=30)

        gateway.DeleteUser(pb.DeleteUserRequest(user_id=USER), timeout=30)
        with pytest.raises(grpc.RpcError) as gone:  # what was shown to the user goes too
            retriever.GetImpressions(
                retriever_pb2.GetImpressionsRequest(recommendation_id=personal.recommendation_id), timeout=10
            )
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as caught:
            retriever.GetUserProfile(retriever_pb2.GetUserProfileRequest(user_id=USER), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        assert _popularity(retriever_channel) == before
    after = gateway.Recommend(pb.RecommendRequest(user_id=USER, k=5), timeout=30)
    assert after.strategy == "popular" and not after.degraded

    for service in SERVICES:
        text = (suite.state_dir / "logs" / f"{service}.log").read_text(errors="replace")
        for secret in (USER, "jo.canary", "555 0199", "5550199", "waterproof glue for"):
            assert secret not in text, f"the {service} log holds {secret!r}"
