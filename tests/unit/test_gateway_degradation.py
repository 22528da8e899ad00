"""The gateway's fallback chain with fake backends: each backend down in turn, the answer still sound and
flagged with the stage that failed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message

from recsys.embedding.v1 import embedding_pb2
from recsys.ranker.v1 import ranker_pb2
from recsys.retriever.v1 import retriever_pb2
from services.common.errors import UnavailableError
from services.gateway.backends import EmbeddingClient, RankerClient, RetrieverClient
from services.gateway.fallbacks import matches, raw_query
from services.gateway.impressions import ImpressionWriter
from services.gateway.model import (
    BackendUnavailableError,
    Candidates,
    CatalogRecord,
    EventRecord,
    HistoryEvent,
    Impression,
    ItemFilter,
    ItemText,
    NewItem,
    Profile,
    StoredItem,
)
from services.gateway.recommender import Blend, PageRef, Recommender, RecommenderLimits, RecommendQuery
from tests.conftest import serving
from tests.unit.test_gateway_recommender import FakeEmbedding, FakeRanking, FakeRetrieval, FakeText


def down(stage: str) -> BackendUnavailableError:
    return BackendUnavailableError(stage, f"the {stage} service did not answer (UNAVAILABLE); retry")


class SwitchableText(FakeText):
    def __init__(self) -> None:
        self.down = False

    async def clean_query(self, text: str) -> str:
        if self.down:
            raise down("preprocessor")
        return await super().clean_query(text)

    async def build_item_texts(self, records: Sequence[CatalogRecord]) -> list[ItemText]:
        if self.down:
            raise down("preprocessor")
        return await super().build_item_texts(records)


class SwitchableEmbedding(FakeEmbedding):
    def __init__(self) -> None:
        self.down = False
        self.queries: list[str] = []

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.down:
            raise down("embedding")
        self.queries += texts
        return await super().embed(texts)


class SwitchableRetrieval(FakeRetrieval):
    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.impressions_down = False

    def _check(self) -> None:
        if self.down:
            raise down("retriever")

    async def get_profile(self, catalog: str, user_id: str) -> Profile | None:
        self._check()
        return await super().get_profile(catalog, user_id)

    async def popular(
        self,
        catalog: str,
        limit: int,
        offset: int,
        item_filter: ItemFilter,
        exclude_ids: Sequence[str],
        with_vectors: bool = False,
    ) -> list[StoredItem]:
        self._check()
        return await super().popular(catalog, limit, offset, item_filter, exclude_ids, with_vectors)

    async def search(
        self, catalog: str, vector: np.ndarray, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]:
        self._check()
        return await super().search(catalog, vector, limit, item_filter, exclude_ids)

    async def candidates(
        self,
        catalog: str,
        vector: np.ndarray,
        limit: int,
        item_filter: ItemFilter,
        exclude_ids: Sequence[str],
        include_ids: Sequence[str],
        history_ids: Sequence[str],
    ) -> Candidates:
        self._check()
        return await super().candidates(catalog, vector, limit, item_filter, exclude_ids, include_ids, history_ids)

    async def append_events(self, catalog: str, user_id: str, events: Sequence[HistoryEvent]) -> list[str]:
        self._check()
        return await super().append_events(catalog, user_id, events)

    async def upsert_items(self, catalog: str, items: Sequence[NewItem]) -> int:
        self._check()
        return await super().upsert_items(catalog, items)

    async def get_impressions(self, catalog: str, recommendation_id: str) -> list[Impression]:
        self._check()
        return await super().get_impressions(catalog, recommendation_id)

    async def record_impressions(self, catalog: str, impressions: Sequence[Impression]) -> None:
        if self.impressions_down:
            raise down("retriever")
        await super().record_impressions(catalog, impressions)


Parts = tuple[Recommender, SwitchableText, SwitchableEmbedding, SwitchableRetrieval, FakeRanking]


@pytest.fixture
def parts() -> Parts:
    text, embedding, retrieval, ranking = SwitchableText(), SwitchableEmbedding(), SwitchableRetrieval(), FakeRanking()
    recommender = Recommender(
        text,
        embedding,
        retrieval,
        ranking,
        RecommenderLimits(max_k=10, candidate_pool=5, popular_cache_size=4),
        Blend(ranker_weight=0.2, query_weight=0.5),
        {"view": 1.0, "purchase": 4.0},
    )
    return recommender, text, embedding, retrieval, ranking


async def test_all_up_is_not_degraded(parts: Parts) -> None:
    recommender, *_ = parts
    await recommender.record_events([EventRecord("u", "a", "view", 1.0)])
    result = await recommender.recommend(RecommendQuery("u", "glue", 3))
    assert result.degraded == () and result.strategy == "personalised+query"


async def test_ranker_down_serves_retrieval_order_flagged(parts: Parts) -> None:
    recommender, _, _, _, ranking = parts
    await recommender.record_events([EventRecord("u", "a", "view", 1.0)])
    ranking.down = True
    result = await recommender.recommend(RecommendQuery("u", "", 3))
    assert result.degraded == ("ranker",) and result.model_version == "" and result.items


async def test_preprocessor_down_embeds_the_raw_query(parts: Parts) -> None:
    recommender, text, embedding, _, _ = parts
    text.down = True
    result = await recommender.recommend(RecommendQuery("nobody", "  wood\x00 glue\n", 2))
    assert result.degraded == ("preprocessor",) and result.strategy == "query"
    assert embedding.queries == ["wood glue"]
    found = await recommender.search("glue", 2, ItemFilter())
    assert found.degraded == ("preprocessor",) and {i.item_id for i in found.items} == {"c", "d"}


async def test_embedding_down_uses_the_profile_or_popular_items(parts: Parts) -> None:
    recommender, _, embedding, _, _ = parts
    await recommender.record_events([EventRecord("u", "a", "view", 1.0)])
    embedding.down = True
    personal = await recommender.recommend(RecommendQuery("u", "glue", 2))
    assert personal.strategy == "personalised" and personal.degraded == ("embedding",)
    anonymous = await recommender.recommend(RecommendQuery("nobody", "glue", 2))
    assert anonymous.strategy == "popular" and anonymous.degraded == ("embedding",)
    assert [i.item_id for i in anonymous.items] == ["e", "d"]
    with pytest.raises(UnavailableError):  # search has no sound answer without the model
        await recommender.search("glue", 2, ItemFilter())


async def test_retriever_down_serves_the_popular_cache_else_unavailable(parts: Parts) -> None:
    recommender, _, _, retrieval, _ = parts
    retrieval.down = True
    with pytest.raises(UnavailableError, match="no popular items are cached"):
        await recommender.recommend(RecommendQuery("u", "", 2))
    retrieval.down = False
    await recommender.popular_cache("").refresh()
    retrieval.down = True
    first = await recommender.recommend(RecommendQuery("u", "glue", 2))
    assert first.degraded == ("retriever",) and first.strategy == "popular"
    assert [i.item_id for i in first.items] == ["e", "d"] and first.has_more
    second = await recommender.recommend(RecommendQuery("u", "", 2, page=PageRef(first.recommendation_id, 2)))
    assert [i.item_id for i in second.items] == ["c", "b"] and not second.has_more
    glue = await recommender.recommend(RecommendQuery("u", "", 5, ItemFilter(categories_any=("glue",))))
    assert [i.item_id for i in glue.items] == ["d", "c"]
    # Writes have no fallback: they fail at once, so the caller can retry.
    with pytest.raises(UnavailableError):
        await recommender.record_events([EventRecord("u", "a", "view", 1.0)])


async def test_delete_user_refreshes_the_popular_cache(parts: Parts) -> None:
    recommender, _, _, retrieval, _ = parts
    await recommender.record_events([EventRecord("u", "a", "view", 1.0)])
    recommender.popular_cache("").clear()
    await recommender.delete_user("u")
    assert recommender.popular_cache("").fetched_at is not None
    assert await retrieval.get_profile("", "u") is None


async def test_a_page_answered_while_impressions_cannot_be_written_is_recorded_once_they_can(parts: Parts) -> None:
    recommender, _, _, retrieval, _ = parts
    retrieval.impressions_down = True
    result = await recommender.recommend(RecommendQuery("u", "", 2))
    assert result.items and result.degraded == ()  # the page is sound; its record is on its way
    assert not await recommender.impressions.flush(0.3)  # still retried while the retriever refuses
    assert recommender.impressions.pending("", result.recommendation_id)
    retrieval.impressions_down = False
    assert await recommender.impressions.flush(5)
    assert [i.item_ids for i in await retrieval.get_impressions("", result.recommendation_id)] == [
        tuple(item.item_id for item in result.items)
    ]


async def test_a_full_impression_queue_records_before_answering_and_flags_a_failure(parts: Parts) -> None:
    recommender, _, _, retrieval, _ = parts
    recommender.impressions = ImpressionWriter(retrieval, capacity=1)
    retrieval.impressions_down = True
    first = await recommender.recommend(RecommendQuery("u", "", 2))
    second = await recommender.recommend(RecommendQuery("u", "", 2))
    assert first.degraded == () and second.degraded == ("impressions",)
    await recommender.impressions.close(0.1)


def test_cached_items_are_filtered_like_the_retriever_does() -> None:
    item = StoredItem("x", 3.0, {"categories": ["glue"], "brand": "Acme", "price": 6.5, "in_stock": True})
    assert matches(item, ItemFilter(categories_any=("glue", "tape")))
    assert matches(item, ItemFilter(keywords={"brand": ("Acme",)}, ranges={"price": (5.0, None)}))
    assert not matches(item, ItemFilter(ranges={"price": (None, 5.0)}))
    assert not matches(item, ItemFilter(flags={"in_stock": False}))
    assert not matches(item, ItemFilter(ranges={"rating": (1.0, None)}))
    assert raw_query("a\tb\u200b\x07c") == "a b c"


class OlderServiceApp:
    """A service from before a newer RPC or encoding: one method registered, as a pod not yet upgraded would serve
    it during a rolling upgrade (grpc answers the other methods with UNIMPLEMENTED)."""

    def __init__(
        self,
        service_name: str,
        method: str,
        answer: Callable[[Any, object], Awaitable[Any]],
        request_type: type[Message],
        response_type: type[Message],
    ) -> None:
        self.service_name = service_name
        self._method = method
        self._handler = grpc.unary_unary_rpc_method_handler(
            answer,
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {self._method: self._handler}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(self.service_name, handlers),))

    async def warm_up(self) -> None:
        return None

    async def close(self) -> None:
        return None


def older_ranker() -> OlderServiceApp:
    """Before SuggestCandidates and ItemMatrix: it reads candidates from the item list alone."""

    async def score(request: ranker_pb2.ScoreCandidatesRequest, context: object) -> ranker_pb2.ScoreCandidatesResponse:
        results = [ranker_pb2.TaskScores(scores=[0.0] * len(t.candidates)) for t in request.tasks]
        return ranker_pb2.ScoreCandidatesResponse(results=results, model_version="old")

    return OlderServiceApp(
        "recsys.ranker.v1.RankerService",
        "ScoreCandidates",
        score,
        ranker_pb2.ScoreCandidatesRequest,
        ranker_pb2.ScoreCandidatesResponse,
    )


def older_embedding() -> OlderServiceApp:
    """Before the packed encoding: it ignores `packed` and sends each vector's `values`."""

    async def embed(request: embedding_pb2.EmbedTextsRequest, context: object) -> embedding_pb2.EmbedTextsResponse:
        embeddings = [embedding_pb2.Embedding(values=[float(len(t)), 1.0], token_count=3) for t in request.texts]
        return embedding_pb2.EmbedTextsResponse(embeddings=embeddings, model_id="old")

    return OlderServiceApp(
        "recsys.embedding.v1.EmbeddingService",
        "EmbedTexts",
        embed,
        embedding_pb2.EmbedTextsRequest,
        embedding_pb2.EmbedTextsResponse,
    )


async def test_an_older_ranker_means_no_graph_candidates_and_a_ranker_fallback_not_an_outage() -> None:
    async with serving(older_ranker()) as channel:
        ranker = RankerClient(channel, timeout_s=5.0)
        assert await ranker.suggest("", "", ["a", "b"], 10) == []
        vector = np.ones(4, dtype=np.float32)
        item = StoredItem("a", 0.0, {}, vector)
        # It sees no candidates in the matrix and scores none: a stage failure (retrieval order), never a
        # misaligned ranking.
        with pytest.raises(BackendUnavailableError, match="0 scores for 1 candidates"):
            await ranker.score("", "", "u", [item], [item])


async def test_an_older_embedding_service_without_the_packed_encoding_still_gives_vectors() -> None:
    async with serving(older_embedding()) as channel:
        embedding = EmbeddingClient(channel, timeout_s=5.0, query_timeout_s=5.0)
        np.testing.assert_array_equal(await embedding.embed(["ab", "abcd"]), [[2.0, 1.0], [4.0, 1.0]])
        np.testing.assert_array_equal(await embedding.embed_query("abc"), [3.0, 1.0])


def older_retriever(recorded: list[retriever_pb2.Impression]) -> OlderServiceApp:
    """Before RecordImpressions: one page a call."""

    async def record(
        request: retriever_pb2.RecordImpressionRequest, context: object
    ) -> retriever_pb2.RecordImpressionResponse:
        recorded.append(request.impression)
        return retriever_pb2.RecordImpressionResponse()

    return OlderServiceApp(
        "recsys.retriever.v1.RetrieverService",
        "RecordImpression",
        record,
        retriever_pb2.RecordImpressionRequest,
        retriever_pb2.RecordImpressionResponse,
    )


async def test_an_older_retriever_records_the_gateway_s_batched_pages_one_by_one() -> None:
    recorded: list[retriever_pb2.Impression] = []
    async with serving(older_retriever(recorded)) as channel:
        retriever = RetrieverClient(channel, timeout_s=5.0)
        pages = [Impression("r1", 1, "u", ("a", "b"), timestamp=1.0), Impression("r1", 2, "u", ("c",), timestamp=2.0)]
        await retriever.record_impressions("", pages)
    assert [(i.recommendation_id, i.page, tuple(i.item_ids)) for i in recorded] == [
        ("r1", 1, ("a", "b")),
        ("r1", 2, ("c",)),
    ]
