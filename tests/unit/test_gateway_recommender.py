"""The gateway's composition logic with fake backends: strategies, blending, paging, reasons, fallbacks,
validation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from services.common.errors import InvalidArgumentError, UnavailableError
from services.gateway.model import (
    CatalogRecord,
    EventRecord,
    HistoryEvent,
    ItemFilter,
    ItemText,
    NewItem,
    Profile,
    Ranking,
    StoredItem,
)
from services.gateway.recommender import Blend, Recommender, RecommenderLimits
from services.gateway.servicer import decode_page_token, encode_page_token

DIM = 4


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


CATALOG = {
    "a": StoredItem("a", 0.0, {"title": "Sanding disc", "categories": ["abrasives"]}, unit(1, 0, 0, 0)),
    "b": StoredItem("b", 0.0, {"title": "Sanding belt", "categories": ["abrasives"]}, unit(1, 0.1, 0, 0)),
    "c": StoredItem("c", 0.0, {"title": "Wood glue", "categories": ["glue"]}, unit(0, 1, 0, 0)),
    "d": StoredItem("d", 0.0, {"title": "Super glue", "categories": ["glue"]}, unit(0, 1, 0.1, 0)),
    "e": StoredItem("e", 0.0, {"title": "Caliper", "categories": ["measure"]}, unit(0, 0, 1, 0)),
}


class FakeText:
    async def clean_query(self, text: str) -> str:
        return text.strip()

    async def build_item_texts(self, records: Sequence[CatalogRecord]) -> list[ItemText]:
        return [ItemText(r.title, False) for r in records]


class FakeEmbedding:
    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([unit(0, 1, 0, 0) if "glue" in t else unit(0, 0, 1, 0) for t in texts])

    async def embed_query(self, text: str) -> np.ndarray:
        vectors: np.ndarray = (await self.embed([text]))[0]
        return vectors


class FakeRetrieval:
    def __init__(self) -> None:
        self.profiles: dict[str, Profile] = {}
        self.upserted: list[NewItem] = []

    async def search(
        self, vector: np.ndarray, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]:
        found = [
            StoredItem(i.item_id, float(i.vector @ vector), i.payload, i.vector)
            for i in CATALOG.values()
            if i.item_id not in exclude_ids and i.vector is not None
        ]
        return sorted(found, key=lambda i: -i.score)[:limit]

    async def similar(
        self, item_id: str, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]:
        source = CATALOG[item_id].vector
        assert source is not None
        return [i for i in await self.search(source, limit + 1, item_filter, exclude_ids) if i.item_id != item_id]

    async def popular(
        self, limit: int, offset: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]:
        ranked = [StoredItem(i, 10.0 - n, CATALOG[i].payload) for n, i in enumerate("edcba")]
        return ranked[offset : offset + limit]

    async def get_items(self, item_ids: Sequence[str], skip_missing: bool) -> list[StoredItem]:
        return [CATALOG[i] for i in item_ids if i in CATALOG]

    async def upsert_items(self, items: Sequence[NewItem]) -> int:
        self.upserted += items
        return len(items)

    async def append_events(self, user_id: str, events: Sequence[HistoryEvent]) -> None:
        old = self.profiles.get(user_id)
        history = (*(old.events if old else ()), *events)
        vectors = [CATALOG[e.item_id].vector for e in history]
        self.profiles[user_id] = Profile(user_id, unit(*np.sum(vectors, axis=0)), history)

    async def get_profile(self, user_id: str) -> Profile | None:
        return self.profiles.get(user_id)

    async def delete_user(self, user_id: str) -> None:
        self.profiles.pop(user_id)


class FakeRanking:
    def __init__(self) -> None:
        self.down = False

    async def score(self, user_id: str, history: Sequence[StoredItem], candidates: Sequence[StoredItem]) -> Ranking:
        if self.down:
            raise UnavailableError("ranker down")
        # Prefers the last candidate most: a ranker that disagrees with retrieval, to see the blend move.
        return Ranking(np.arange(len(candidates), dtype=np.float32), "v1")


@pytest.fixture
def parts() -> tuple[Recommender, FakeRetrieval, FakeRanking]:
    retrieval, ranking = FakeRetrieval(), FakeRanking()
    recommender = Recommender(
        FakeText(),
        FakeEmbedding(),
        retrieval,
        ranking,
        RecommenderLimits(max_k=10, candidate_pool=5),
        Blend(ranker_weight=0.2, query_weight=0.5),
        {"view": 1.0, "purchase": 4.0},
    )
    return recommender, retrieval, ranking


async def test_new_user_gets_popular_items_with_paging(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, _, _ = parts
    first = await recommender.recommend("new", "", 2, ItemFilter(), True, 0)
    assert first.strategy == "popular" and [i.item_id for i in first.items] == ["e", "d"]
    assert first.next_offset == 2 and first.items[0].reason == "Popular: 10 interactions"
    second = await recommender.recommend("new", "", 2, ItemFilter(), True, first.next_offset)
    assert [i.item_id for i in second.items] == ["c", "b"]


async def test_history_drives_recommendations_and_reasons(
    parts: tuple[Recommender, FakeRetrieval, FakeRanking],
) -> None:
    recommender, _, _ = parts
    await recommender.record_events([EventRecord("u", "a", "purchase", 1.0)])
    result = await recommender.recommend("u", "", 2, ItemFilter(), True, 0)
    assert result.strategy == "personalised" and result.model_version == "v1"
    assert result.items[0].item_id == "b"
    assert result.items[0].reason == "Similar to “Sanding disc”, which you bought"
    assert "a" not in [i.item_id for i in result.items]
    kept = await recommender.recommend("u", "", 5, ItemFilter(), False, 0)
    assert "a" in [i.item_id for i in kept.items]


async def test_a_query_steers_and_explains(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, _, _ = parts
    await recommender.record_events([EventRecord("u", "a", "view", 1.0)])
    result = await recommender.recommend("u", "glue", 3, ItemFilter(), True, 0)
    assert result.strategy == "personalised+query"
    assert any(item.reason == "Matches your search “glue”" for item in result.items)
    anonymous = await recommender.recommend("nobody", "glue", 2, ItemFilter(), True, 0)
    assert anonymous.strategy == "query" and {i.item_id for i in anonymous.items} == {"c", "d"}


async def test_ranker_outage_falls_back_to_retrieval_order(
    parts: tuple[Recommender, FakeRetrieval, FakeRanking],
) -> None:
    recommender, _, ranking = parts
    await recommender.record_events([EventRecord("u", "a", "view", 1.0)])
    ranking.down = True
    result = await recommender.recommend("u", "", 3, ItemFilter(), True, 0)
    assert result.model_version == "" and result.items[0].item_id == "b"


async def test_pages_never_repeat(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, _, _ = parts
    await recommender.record_events([EventRecord("u", "c", "view", 1.0)])
    shown: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = await recommender.recommend("u", "", 1, ItemFilter(), True, offset)
        shown += [i.item_id for i in page.items]
        offset = page.next_offset
    assert sorted(shown) == ["a", "b", "d", "e"]


async def test_validation(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, retrieval, _ = parts
    for k in (0, 11, -1):
        with pytest.raises(InvalidArgumentError, match=f"k is {k}"):
            await recommender.recommend("u", "", k, ItemFilter(), True, 0)
    with pytest.raises(InvalidArgumentError, match="appears twice"):
        await recommender.upsert_items([CatalogRecord("x", "X"), CatalogRecord("x", "X")])
    with pytest.raises(InvalidArgumentError, match="reserved"):
        await recommender.upsert_items([CatalogRecord("x", "X", attributes={"popularity": 3.0})])
    with pytest.raises(InvalidArgumentError, match="unknown type"):
        await recommender.record_events([EventRecord("u", "a", "like", 1.0)])
    assert not retrieval.upserted and not retrieval.profiles


def test_page_tokens_round_trip_and_reject_forgeries() -> None:
    assert decode_page_token(encode_page_token(40)) == 40
    assert decode_page_token("") == 0
    for bad in ("zzz", "b2Zmc2V0OnRlbg==", "!!"):
        with pytest.raises(InvalidArgumentError, match="page_token"):
            decode_page_token(bad)
