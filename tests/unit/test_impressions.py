"""The feedback log over gRPC: record, get, list (experiment filter, paging), idempotent replace, attribution,
shown counts, DeleteUser removing impressions, bad input; in the default and in a named catalog."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from recsys.retriever.v1 import retriever_pb2 as pb
from recsys.retriever.v1 import retriever_pb2_grpc
from services.retriever import feedback
from services.retriever.app import RetrieverApp, open_store
from services.retriever.config import RetrieverSettings
from tests.conftest import serving

DIM = 8
MAX_BATCH = 20
Stub = retriever_pb2_grpc.RetrieverServiceStub


def _vector(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).tolist()


@pytest.fixture(scope="module")
async def stub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stub]:
    data_dir: Path = tmp_path_factory.mktemp("qdrant")
    settings = RetrieverSettings(data_dir=data_dir, dimension=DIM, max_limit=50, max_batch=MAX_BATCH)
    async with serving(RetrieverApp(settings, open_store(settings))) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        items = [pb.Item(item_id=f"item-{n}", vector=_vector(n)) for n in range(10)]
        for catalog in ("", "shop"):
            await stub.UpsertItems(pb.UpsertItemsRequest(catalog=catalog, items=items))
        yield stub


@pytest.fixture(params=["", "shop"], ids=["default", "named"])
def catalog(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _shown(rid: str, page: int, user: str, items: list[str], experiment: str = "", arm: str = "") -> pb.Impression:
    return pb.Impression(
        recommendation_id=rid,
        page=page,
        user_id=user,
        item_ids=items,
        experiment=experiment,
        arm=arm,
        timestamp=1_700_000_000.0 + page,
    )


async def _record(stub: Stub, catalog: str, impression: pb.Impression) -> None:
    await stub.RecordImpression(pb.RecordImpressionRequest(catalog=catalog, impression=impression))


async def _pages(stub: Stub, catalog: str, rid: str) -> list[pb.Impression]:
    response = await stub.GetImpressions(pb.GetImpressionsRequest(catalog=catalog, recommendation_id=rid))
    return list(response.impressions)


async def _profile(stub: Stub, catalog: str, user: str) -> pb.UserProfile:
    return (await stub.GetUserProfile(pb.GetUserProfileRequest(catalog=catalog, user_id=user))).profile


async def test_record_get_and_idempotent_replace(stub: Stub, catalog: str) -> None:
    await _record(stub, catalog, _shown("rec-a", 2, "alice", ["item-3", "item-4"], "exp-1", "b"))
    await _record(stub, catalog, _shown("rec-a", 1, "alice", ["item-1", "item-2"], "exp-1", "b"))
    pages = await _pages(stub, catalog, "rec-a")
    assert [(p.page, list(p.item_ids)) for p in pages] == [(1, ["item-1", "item-2"]), (2, ["item-3", "item-4"])]
    assert (pages[0].user_id, pages[0].experiment, pages[0].arm, pages[0].timestamp) == (
        "alice",
        "exp-1",
        "b",
        1_700_000_001.0,
    )
    # A new user is created by their first impression: no events, no vector, shown counts.
    profile = await _profile(stub, catalog, "alice")
    assert (list(profile.events), list(profile.vector)) == ([], [])
    assert dict(profile.shown_counts) == {"item-1": 1, "item-2": 1, "item-3": 1, "item-4": 1}
    # Retrying a page changes nothing; engaged/converted on input are ignored.
    retry = _shown("rec-a", 1, "alice", ["item-1", "item-2"], "exp-1", "b")
    retry.engaged_item_ids.append("item-1")
    await _record(stub, catalog, retry)
    pages = await _pages(stub, catalog, "rec-a")
    assert len(pages) == 2 and list(pages[0].engaged_item_ids) == []
    assert dict((await _profile(stub, catalog, "alice")).shown_counts)["item-1"] == 1
    # Another page 1 for the same id replaces it.
    await _record(stub, catalog, _shown("rec-a", 1, "alice", ["item-5"], "exp-1", "b"))
    assert [list(p.item_ids) for p in await _pages(stub, catalog, "rec-a")] == [["item-5"], ["item-3", "item-4"]]
    # A second recommendation showing item-3 again counts it again.
    await _record(stub, catalog, _shown("rec-b", 1, "alice", ["item-3"]))
    assert dict((await _profile(stub, catalog, "alice")).shown_counts)["item-3"] == 2


async def test_attribution_and_shown_counts_reset(stub: Stub, catalog: str) -> None:
    await _record(stub, catalog, _shown("rec-c", 1, "bob", ["item-1", "item-2", "item-3"]))
    await _record(stub, catalog, _shown("rec-c", 2, "bob", ["item-4", "item-5"]))
    shown_at = 1_700_000_000.0
    events = [  # after the pages were shown
        pb.UserEvent(
            item_id="item-2", event_type="click", timestamp=shown_at + 10, weight=2.0, recommendation_id="rec-c"
        ),
        pb.UserEvent(
            item_id="item-5", event_type="purchase", timestamp=shown_at + 11, weight=4.0, recommendation_id="rec-c"
        ),
        pb.UserEvent(
            item_id="item-9", event_type="click", timestamp=shown_at + 12, weight=2.0, recommendation_id="rec-c"
        ),
        pb.UserEvent(
            item_id="item-1", event_type="view", timestamp=shown_at + 13, weight=1.0, recommendation_id="no-such"
        ),
    ]
    response = await stub.AppendUserEvents(pb.AppendUserEventsRequest(catalog=catalog, user_id="bob", events=events))
    # The response names the recommendation id no impression has: the caller's wiring bug is visible.
    assert list(response.unknown_recommendation_ids) == ["no-such"]
    profile = response.profile
    # Every event is stored (with its recommendation id) and the profile has a vector now.
    assert [e.recommendation_id for e in profile.events] == ["rec-c", "rec-c", "rec-c", "no-such"]
    assert len(profile.vector) == DIM
    # An event on an item after it was shown resets its shown count; the others stay.
    assert dict(profile.shown_counts) == {"item-3": 1, "item-4": 1}
    assert dict((await _profile(stub, catalog, "bob")).shown_counts) == {"item-3": 1, "item-4": 1}
    page1, page2 = await _pages(stub, catalog, "rec-c")
    assert (list(page1.engaged_item_ids), list(page1.converted_item_ids)) == (["item-2"], [])
    assert (list(page2.engaged_item_ids), list(page2.converted_item_ids)) == (["item-5"], ["item-5"])
    # item-1 was shown in rec-c but its event named another recommendation: not attributed.
    assert "item-1" not in page1.engaged_item_ids


async def test_list_filters_by_experiment_and_pages(stub: Stub) -> None:
    catalog = "listing"
    await stub.UpsertItems(pb.UpsertItemsRequest(catalog=catalog, items=[pb.Item(item_id="x", vector=_vector(0))]))
    for n in range(9):
        experiment = "exp-list" if n % 3 == 0 else "other"
        await _record(stub, catalog, _shown(f"rec-{n}", 1, "", ["x"], experiment, "a" if n % 2 else "b"))
    seen: list[str] = []
    token = ""
    for _ in range(10):
        response = await stub.ListImpressions(pb.ListImpressionsRequest(catalog=catalog, limit=4, page_token=token))
        assert len(response.impressions) <= 4
        seen.extend(i.recommendation_id for i in response.impressions)
        token = response.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(f"rec-{n}" for n in range(9)) and len(seen) == 9
    only = await stub.ListImpressions(pb.ListImpressionsRequest(catalog=catalog, experiment="exp-list", limit=2))
    more = await stub.ListImpressions(
        pb.ListImpressionsRequest(catalog=catalog, experiment="exp-list", limit=2, page_token=only.next_page_token)
    )
    assert only.next_page_token and not more.next_page_token
    assert sorted(i.recommendation_id for i in [*only.impressions, *more.impressions]) == ["rec-0", "rec-3", "rec-6"]
    assert all(i.experiment == "exp-list" for i in [*only.impressions, *more.impressions])


async def test_delete_user_removes_their_impressions(stub: Stub, catalog: str) -> None:
    await _record(stub, catalog, _shown("rec-d", 1, "carol", ["item-1"]))
    await _record(stub, catalog, _shown("rec-d", 2, "carol", ["item-2"]))
    await _record(stub, catalog, _shown("rec-e", 1, "dave", ["item-1"]))
    event = pb.UserEvent(item_id="item-1", event_type="click", timestamp=1.0, weight=1.0, recommendation_id="rec-d")
    await stub.AppendUserEvents(pb.AppendUserEventsRequest(catalog=catalog, user_id="carol", events=[event]))
    await stub.DeleteUser(pb.DeleteUserRequest(catalog=catalog, user_id="carol"))
    for call in (
        stub.GetImpressions(pb.GetImpressionsRequest(catalog=catalog, recommendation_id="rec-d")),
        stub.GetUserProfile(pb.GetUserProfileRequest(catalog=catalog, user_id="carol")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListImpressions(pb.ListImpressionsRequest(catalog=catalog, limit=1000))
    assert all(i.user_id != "carol" for i in listed.impressions)
    assert len(await _pages(stub, catalog, "rec-e")) == 1


@pytest.mark.parametrize(
    ("call", "request_", "code", "message"),
    [
        ("GetImpressions", pb.GetImpressionsRequest(recommendation_id="never"), grpc.StatusCode.NOT_FOUND, "never"),
        ("GetImpressions", pb.GetImpressionsRequest(), grpc.StatusCode.INVALID_ARGUMENT, "recommendation_id"),
        (
            "RecordImpression",
            pb.RecordImpressionRequest(impression=pb.Impression(page=1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "recommendation_id must be 1 to 128 characters",
        ),
        (
            "RecordImpression",
            pb.RecordImpressionRequest(impression=pb.Impression(recommendation_id="r" * 129, page=1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "recommendation_id must be 1 to 128 characters",
        ),
        (
            "RecordImpression",
            pb.RecordImpressionRequest(impression=pb.Impression(recommendation_id="r")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page must be 1 or more",
        ),
        (
            "RecordImpression",
            pb.RecordImpressionRequest(
                impression=pb.Impression(recommendation_id="r", page=1, item_ids=["x"] * (MAX_BATCH + 1))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "RETRIEVER_MAX_BATCH",
        ),
        (
            "RecordImpression",
            pb.RecordImpressionRequest(impression=pb.Impression(recommendation_id="r", page=1, experiment="e" * 65)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "experiment must be at most 64 characters",
        ),
        (
            "RecordImpression",
            pb.RecordImpressionRequest(impression=pb.Impression(recommendation_id="r", page=1, arm="a" * 65)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "arm must be at most 64 characters",
        ),
        ("ListImpressions", pb.ListImpressionsRequest(), grpc.StatusCode.INVALID_ARGUMENT, "limit must be from 1 to"),
        (
            "ListImpressions",
            pb.ListImpressionsRequest(limit=1001),
            grpc.StatusCode.INVALID_ARGUMENT,
            "limit must be from 1 to 1000",
        ),
        (
            "ListImpressions",
            pb.ListImpressionsRequest(limit=5, page_token="garbage"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "next_page_token",
        ),
        (
            "AppendUserEvents",
            pb.AppendUserEventsRequest(
                user_id="u",
                events=[
                    pb.UserEvent(
                        item_id="item-1", event_type="view", timestamp=1, weight=1, recommendation_id="r" * 129
                    )
                ],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "recommendation_id",
        ),
    ],
)
async def test_bad_input(stub: Stub, call: str, request_: object, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, call)(request_)
    assert caught.value.code() == code, caught.value.details()
    assert message in (caught.value.details() or "")


def test_shown_counts_round_trip_and_older_payloads_still_read() -> None:
    shown = feedback.bump_shown({"a": 2, "b": 1}, ["a", "c"])
    assert list(shown.items()) == [("b", 1), ("a", 3), ("c", 1)]  # least recently shown first
    assert feedback.shown_from_payload(feedback.shown_to_payload(shown)) == shown
    older = [{"item_id": "b", "count": 1}, {"item_id": "a", "count": 3}]
    assert feedback.shown_from_payload(older) == {"b": 1, "a": 3}
    assert feedback.shown_from_payload("not json") == {} and feedback.shown_from_payload(None) == {}
