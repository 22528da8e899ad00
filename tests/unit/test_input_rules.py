"""Input is checked alike at every door: one rule for ids and the request-id header, errors that name the
caller's own field, page tokens bound to their request, unknown catalogs visible, category rules that cannot act
said so."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.retriever.v1 import retriever_pb2
from services.common.errors import InvalidArgumentError
from services.common.server import REQUEST_ID_KEY
from services.gateway.impressions import ImpressionWriter
from services.gateway.model import CatalogRecord, HistoryEvent, ItemText, StoredItem
from services.gateway.recommender import Recommender
from services.gateway.servicer import GatewayServicer
from services.retriever.store import validate_id
from tests.unit.test_common import SlowEncoder, _start
from tests.unit.test_gateway_recommender import FakeRanking, FakeRetrieval, FakeText, parts, rq, unit
from tests.unit.test_retriever_catalogs import _code, _items, _vector, running

__all__ = ["parts"]  # the fixture, imported for the tests below

Parts = tuple[Recommender, FakeRetrieval, FakeRanking]
ZERO_WIDTH = "\u200b\u200b\u200b"


@pytest.mark.parametrize("user_id", ["   ", ZERO_WIDTH, "\u2060\ufeff", "\u200e \u202e"])
async def test_an_invisible_user_id_is_refused_like_a_blank_one(parts: Parts, user_id: str) -> None:
    recommender, _, _ = parts
    with pytest.raises(InvalidArgumentError, match="user_id is empty or has only invisible characters"):
        await recommender.recommend(rq(user_id))
    with pytest.raises(InvalidArgumentError, match="user_id is empty or has only invisible"):
        await recommender.delete_user(user_id)


@pytest.mark.parametrize("user_id", [ZERO_WIDTH, "u\n1"])
def test_the_retriever_applies_the_same_id_rule(user_id: str) -> None:
    with pytest.raises(InvalidArgumentError, match="user id"):
        validate_id(user_id, "user id")
    assert validate_id("u 1\u200b", "user id") == "u 1\u200b", "visible text with a zero-width space is an id"


@pytest.mark.parametrize("query", ["🎸🎸", "🎸 🤘", "!!! ???"])
async def test_a_query_without_words_is_refused_not_answered_with_arbitrary_items(parts: Parts, query: str) -> None:
    recommender, _, _ = parts
    with pytest.raises(InvalidArgumentError, match="query has no letters or digits"):
        await recommender.search(query, 3, rq().item_filter)
    with pytest.raises(InvalidArgumentError, match="query has no letters or digits"):
        await recommender.recommend(rq("someone", query=query))


class MarkupStrippingText(FakeText):
    """Cleans like the preprocessor does for markup: tags go, their text stays."""

    async def build_item_texts(self, records: Sequence[CatalogRecord]) -> list[ItemText]:
        return [ItemText(r.title.replace("<b>", "").replace("</b>", "").strip(), False) for r in records]


async def test_a_markup_only_title_is_named_by_the_callers_field(parts: Parts) -> None:
    recommender, retrieval, _ = parts
    recommender.text = MarkupStrippingText()
    good = CatalogRecord("fine", "<b>Wood glue</b>")
    with pytest.raises(InvalidArgumentError, match=r"items\[1\]\.title has no text after cleaning"):
        await recommender.upsert_items([good, CatalogRecord("bare", "<b></b>")])
    assert not retrieval.upserted, "nothing of the batch is stored"
    assert await recommender.upsert_items([good]) == (1, 0)


async def test_a_page_token_is_bound_to_its_request(parts: Parts) -> None:
    servicer = GatewayServicer(parts[0])
    request = pb.RecommendRequest(user_id="new", k=2)
    first = await servicer.Recommend(request, None)  # type: ignore[arg-type]
    assert first.next_page_token
    second = await servicer.Recommend(
        pb.RecommendRequest(user_id="new", k=2, page_token=first.next_page_token),
        None,  # type: ignore[arg-type]
    )
    assert second.page == 2 and second.recommendation_id == first.recommendation_id
    for changed in (
        pb.RecommendRequest(user_id="other", k=2),
        pb.RecommendRequest(user_id="new", k=3),
        pb.RecommendRequest(user_id="new", k=2, filter=pb.Filter(categories_any=["glue"])),
    ):
        changed.page_token = first.next_page_token
        with pytest.raises(InvalidArgumentError, match="page_token belongs to a different request"):
            await servicer.Recommend(changed, None)  # type: ignore[arg-type]


async def test_a_request_id_outside_the_rule_is_replaced_not_logged() -> None:
    encoder = SlowEncoder()
    running_server, channel = await _start(encoder)
    await running_server.warm_up()
    encoder.fail = True
    stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
    request = embedding_pb2.EmbedTextsRequest(texts=["x"])
    for bad in ("r" * 5000, "with space"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.EmbedTexts(request, metadata=((REQUEST_ID_KEY, bad),))
        details = caught.value.details() or ""
        assert caught.value.code() == grpc.StatusCode.INTERNAL and bad not in details
        assert len(details) < 200, "a fresh id, not the caller's header"
    with pytest.raises(grpc.aio.AioRpcError) as kept:
        await stub.EmbedTexts(request, metadata=((REQUEST_ID_KEY, "trace-7f:a/b"),))
    assert "trace-7f:a/b" in (kept.value.details() or "")
    await channel.close()
    await running_server.stop()


async def test_reads_of_a_catalog_that_does_not_exist_are_not_found(tmp_path: Path) -> None:
    async with running(tmp_path) as stub:
        await stub.UpsertItems(retriever_pb2.UpsertItemsRequest(catalog="articles", items=_items("a", 1)))
        c = "artciles"
        query = retriever_pb2.SearchQuery(vector=_vector(1), limit=5)
        for call in (
            stub.SearchItems(retriever_pb2.SearchItemsRequest(catalog=c, queries=[query])),
            stub.ListPopularItems(retriever_pb2.ListPopularItemsRequest(catalog=c, limit=5)),
            stub.GetItems(retriever_pb2.GetItemsRequest(catalog=c, item_ids=["x"], skip_missing=True)),
            stub.GetCollectionInfo(retriever_pb2.GetCollectionInfoRequest(catalog=c)),
            stub.ListImpressions(retriever_pb2.ListImpressionsRequest(catalog=c, limit=10)),
            stub.GetUserProfile(retriever_pb2.GetUserProfileRequest(catalog=c, user_id="u")),
        ):
            code, details = await _code(call)
            assert code == grpc.StatusCode.NOT_FOUND, details
            assert "catalog 'artciles' does not exist" in details and "'articles'" in details, details
            assert "UpsertItems" in details, "says how a catalog is created"
    assert sorted(p.name for p in (tmp_path / "catalogs").iterdir()) == ["articles"], "a read creates nothing"


UNCATEGORISED = {
    "m1": StoredItem("m1", 0.0, {"title": "Kraftwerk"}, unit(1, 0, 0, 0)),
    "m2": StoredItem("m2", 0.0, {"title": "a-ha"}, unit(1, 0.1, 0, 0)),
    "m3": StoredItem("m3", 0.0, {"title": "Erasure"}, unit(0, 1, 0, 0)),
}


async def test_category_rules_on_a_catalog_without_categories_say_they_did_nothing(parts: Parts) -> None:
    recommender, retrieval, _ = parts
    retrieval.items["music"] = dict(UNCATEGORISED)
    servicer = GatewayServicer(recommender)
    request = pb.RecommendRequest(
        catalog="music", query="synth", k=2, max_per_category=1, boosts=[pb.Boost(category="Rock", weight=2)]
    )
    response = await servicer.Recommend(request, None)  # type: ignore[arg-type]
    assert len(response.items) == 2
    assert any(w.startswith("max_per_category had no effect") for w in response.warnings), response.warnings
    assert any(w.startswith("boosts[0] had no effect") for w in response.warnings), response.warnings
    filtered = pb.RecommendRequest(catalog="music", query="synth", k=2, filter=pb.Filter(categories_any=["Rock"]))
    response = await servicer.Recommend(filtered, None)  # type: ignore[arg-type]
    assert not response.items and any(w.startswith("filter.categories_any left no item") for w in response.warnings)
    search = pb.SearchItemsRequest(catalog="music", query="synth", k=2, filter=pb.Filter(categories_any=["Rock"]))
    found = await servicer.SearchItems(search, None)  # type: ignore[arg-type]
    assert not found.items and found.warnings
    similar = pb.GetSimilarItemsRequest(catalog="music", item_id="m1", k=2, filter=pb.Filter(categories_any=["Rock"]))
    assert (await servicer.GetSimilarItems(similar, None)).warnings  # type: ignore[arg-type]
    # Where categories exist, the same rules act and nothing is said.
    plain = await servicer.Recommend(
        pb.RecommendRequest(query="glue", k=2, max_per_category=1, boosts=[pb.Boost(category="glue", weight=2)]),
        None,  # type: ignore[arg-type]
    )
    assert not plain.warnings


class AttributingRetrieval(FakeRetrieval):
    """Names the recommendation ids no recorded impression has, as the retriever's AppendUserEvents does."""

    async def append_events(self, catalog: str, user_id: str, events: Sequence[HistoryEvent]) -> list[str]:
        await super().append_events(catalog, user_id, events)
        issued = {rid for c, rid in self.impressions if c == catalog}
        return [e.recommendation_id for e in events if e.recommendation_id and e.recommendation_id not in issued]


async def test_a_recommendation_id_never_issued_is_named_in_the_response(parts: Parts) -> None:
    recommender, _, _ = parts
    recommender.retrieval = AttributingRetrieval()
    recommender.impressions = ImpressionWriter(recommender.retrieval)
    servicer = GatewayServicer(recommender)
    shown = await servicer.Recommend(pb.RecommendRequest(user_id="u", k=2), None)  # type: ignore[arg-type]
    request = pb.RecordEventsRequest(
        events=[
            pb.Event(user_id="u", item_id="a", recommendation_id=shown.recommendation_id),
            pb.Event(user_id="u", item_id="b", recommendation_id="never-issued"),
            pb.Event(user_id="v", item_id="c", recommendation_id="never-issued"),
            pb.Event(user_id="v", item_id="d"),
        ]
    )
    response = await servicer.RecordEvents(request, None)  # type: ignore[arg-type]
    # Every event is stored; the id no Recommend gave is named once, so the caller's wiring bug is visible.
    assert response.recorded == 4
    assert list(response.unknown_recommendation_ids) == ["never-issued"]
