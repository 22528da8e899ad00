"""The gateway's composition logic with fake backends: strategies, blending, paging, reasons, fallbacks,
validation."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
import pytest

from services.common.errors import InvalidArgumentError, NotFoundError, UnavailableError
from services.gateway.experiments import Arm, ArmSettings, Experiment, Experiments
from services.gateway.fallbacks import matches
from services.gateway.model import (
    SERVING_ENCODER,
    Candidates,
    CatalogRecord,
    EncoderChangedError,
    EventRecord,
    HistoryEvent,
    Impression,
    ItemFilter,
    ItemText,
    NewItem,
    Profile,
    Ranking,
    StoredItem,
)
from services.gateway.recommender import Blend, PageRef, Recommender, RecommenderLimits, RecommendQuery
from services.gateway.rules import Boost, Pin, Rules
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
    """One catalog ("") holds CATALOG; others start empty. Impressions and shown counts as the retriever
    keeps them."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, StoredItem]] = {"": dict(CATALOG)}
        self.profiles: dict[tuple[str, str], Profile] = {}
        self.upserted: list[NewItem] = []
        self.impressions: dict[tuple[str, str], list[Impression]] = {}

    def _catalog(self, catalog: str) -> dict[str, StoredItem]:
        return self.items.get(catalog, {})

    async def search(
        self, catalog: str, vector: np.ndarray, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]:
        return (await self._ranked(catalog, vector, item_filter, exclude_ids))[:limit]

    async def _ranked(
        self, catalog: str, vector: np.ndarray, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]:
        found = [
            StoredItem(i.item_id, float(i.vector @ vector), i.payload, i.vector)
            for i in self._catalog(catalog).values()
            if i.item_id not in exclude_ids and i.vector is not None and matches(i, item_filter)
        ]
        return sorted(found, key=lambda i: -i.score)

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
        ranked = await self._ranked(catalog, vector, item_filter, exclude_ids)
        proposed = [i for i in ranked[limit:] if i.item_id in include_ids]
        return Candidates(ranked[:limit], proposed, await self.get_items(catalog, history_ids, skip_missing=True))

    async def similar(
        self, catalog: str, item_id: str, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]:
        source = self._catalog(catalog)[item_id].vector
        assert source is not None
        found = await self.search(catalog, source, limit + 1, item_filter, exclude_ids)
        return [i for i in found if i.item_id != item_id]

    async def popular(
        self,
        catalog: str,
        limit: int,
        offset: int,
        item_filter: ItemFilter,
        exclude_ids: Sequence[str],
        with_vectors: bool = False,
    ) -> list[StoredItem]:
        items = self._catalog(catalog)
        ranked = [
            StoredItem(i, 10.0 - n, items[i].payload, items[i].vector)
            for n, i in enumerate("edcba")
            if i in items and i not in exclude_ids and matches(items[i], item_filter)
        ]
        return ranked[offset : offset + limit]

    async def get_items(self, catalog: str, item_ids: Sequence[str], skip_missing: bool) -> list[StoredItem]:
        items = self._catalog(catalog)
        missing = [i for i in item_ids if i not in items]
        if missing and not skip_missing:
            raise NotFoundError(f"unknown items {missing}")
        return [items[i] for i in item_ids if i in items]

    async def upsert_items(self, catalog: str, items: Sequence[NewItem]) -> int:
        self.upserted += items
        stored = self.items.setdefault(catalog, {})
        for item in items:
            stored[item.item_id] = StoredItem(item.item_id, 0.0, item.payload, item.vector)
        return len(items)

    async def append_events(self, catalog: str, user_id: str, events: Sequence[HistoryEvent]) -> list[str]:
        old = self.profiles.get((catalog, user_id))
        history = (*(old.events if old else ()), *events)
        vectors = [v for e in history if (v := self._catalog(catalog)[e.item_id].vector) is not None]
        shown = {i: n for i, n in (old.shown_counts if old else {}).items() if i not in {e.item_id for e in events}}
        self.profiles[(catalog, user_id)] = Profile(user_id, unit(*np.sum(vectors, axis=0)), history, shown)
        return []

    async def get_profile(self, catalog: str, user_id: str) -> Profile | None:
        return self.profiles.get((catalog, user_id))

    async def delete_user(self, catalog: str, user_id: str) -> None:
        self.profiles.pop((catalog, user_id))

    async def record_impressions(self, catalog: str, impressions: Sequence[Impression]) -> None:
        for impression in impressions:
            self.impressions.setdefault((catalog, impression.recommendation_id), []).append(impression)
            if impression.user_id:
                old = self.profiles.get((catalog, impression.user_id)) or Profile(impression.user_id, None, ())
                shown = dict(old.shown_counts)
                for item_id in impression.item_ids:
                    shown[item_id] = shown.get(item_id, 0) + 1
                self.profiles[(catalog, impression.user_id)] = Profile(old.user_id, old.vector, old.events, shown)

    async def get_impressions(self, catalog: str, recommendation_id: str) -> list[Impression]:
        return self.impressions.get((catalog, recommendation_id), [])


class FakeRanking:
    def __init__(self) -> None:
        self.down = False
        self.calls: list[tuple[str, str]] = []
        self.suggestions: list[str] = []  # what the item graph proposes
        self.suggested_for: list[list[str]] = []

    async def suggest(
        self, catalog: str, model_version: str, history_ids: Sequence[str], limit: int
    ) -> list[tuple[str, float]]:
        if self.down:
            raise UnavailableError("ranker down")
        self.suggested_for.append(list(history_ids))
        return [(item_id, 2.0) for item_id in self.suggestions[:limit]]

    async def score(
        self,
        catalog: str,
        model_version: str,
        user_id: str,
        history: Sequence[StoredItem],
        candidates: Sequence[StoredItem],
    ) -> Ranking | None:
        if self.down:
            raise UnavailableError("ranker down")
        self.calls.append((catalog, model_version))
        if catalog:
            return None
        # Prefers the last candidate most: a ranker that disagrees with retrieval, to see the blend move.
        return Ranking(np.arange(len(candidates), dtype=np.float32), model_version or "v1")


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


def rq(user_id: str = "", query: str = "", k: int = 2, **options: object) -> RecommendQuery:
    return RecommendQuery(user_id=user_id, query=query, k=k, **options)  # type: ignore[arg-type]


async def test_new_user_gets_popular_items_with_paging(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, retrieval, _ = parts
    first = await recommender.recommend(rq("new"))
    assert first.strategy == "popular" and [i.item_id for i in first.items] == ["e", "d"]
    assert first.has_more and first.items[0].reason == "Popular: 10 interactions" and first.page == 1
    assert await recommender.impressions.flush(5)  # written after the answer, the caller not waiting for it
    assert retrieval.impressions[("", first.recommendation_id)][0].item_ids == ("e", "d")
    second = await recommender.recommend(rq("new", page=PageRef(first.recommendation_id, 2)))
    assert [i.item_id for i in second.items] == ["c", "b"] and second.recommendation_id == first.recommendation_id


async def test_history_drives_recommendations_and_reasons(
    parts: tuple[Recommender, FakeRetrieval, FakeRanking],
) -> None:
    recommender, _, _ = parts
    await recommender.record_events([EventRecord("u", "a", "purchase", 1.0)])
    result = await recommender.recommend(rq("u"))
    assert result.strategy == "personalised" and result.model_version == "v1"
    assert result.items[0].item_id == "b"
    assert result.items[0].reason == "Similar to “Sanding disc”, which you bought"
    assert "a" not in [i.item_id for i in result.items]
    kept = await recommender.recommend(rq("u", k=5, exclude_seen=False))
    assert "a" in [i.item_id for i in kept.items]


async def test_a_query_steers_and_explains(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, _, _ = parts
    await recommender.record_events([EventRecord("u", "a", "view", 1.0)])
    result = await recommender.recommend(rq("u", "glue", k=3))
    assert result.strategy == "personalised+query"
    assert any(item.reason == "Matches your search “glue”" for item in result.items)
    anonymous = await recommender.recommend(rq("nobody", "glue"))
    assert anonymous.strategy == "query" and {i.item_id for i in anonymous.items} == {"c", "d"}


async def test_anonymous_session_from_context_items(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, _, ranking = parts
    result = await recommender.recommend(rq(context_item_ids=("a",), k=1))
    assert result.strategy == "session" and [i.item_id for i in result.items] == ["b"]
    assert result.items[0].reason == "Goes with “Sanding disc” in this session"
    assert ranking.calls == [("", "")]  # the session's items are the ranker's history
    with pytest.raises(NotFoundError):
        await recommender.recommend(rq(context_item_ids=("ghost",)))


async def test_ranker_outage_falls_back_to_retrieval_order(
    parts: tuple[Recommender, FakeRetrieval, FakeRanking],
) -> None:
    recommender, _, ranking = parts
    await recommender.record_events([EventRecord("u", "a", "view", 1.0)])
    ranking.down = True
    result = await recommender.recommend(rq("u", k=3))
    assert result.model_version == "" and result.items[0].item_id == "b" and result.degraded == ("ranker",)


async def test_item_graph_candidates_join_the_pool() -> None:
    """The caliper is far from the sanding disc in text, so the profile's two nearest items leave it out; the
    ranker's item graph proposes it, it joins the pool and the ranker (which likes the last candidate) picks it."""
    retrieval, ranking = FakeRetrieval(), FakeRanking()
    limits = RecommenderLimits(max_k=10, candidate_pool=2, graph_candidates=5)
    recommender = Recommender(
        FakeText(), FakeEmbedding(), retrieval, ranking, limits, Blend(ranker_weight=1.0), {"view": 1.0}
    )
    await recommender.record_events([EventRecord("u", "a", "view", 1.0)])
    without = await recommender.recommend(rq("u", k=1))
    assert [i.item_id for i in without.items] != ["e"] and ranking.suggested_for == [["a"]]
    ranking.suggestions = ["e", "a"]  # a history item is excluded by the retriever like any seen item
    found = await recommender.recommend(rq("u", k=1))
    assert [i.item_id for i in found.items] == ["e"] and found.stage_ms["suggest"] >= 0
    assert found.items[0].evidence == "graph"
    assert found.items[0].reason == "Often chosen by people with a history like yours"
    ranking.down = True
    degraded = await recommender.recommend(rq("u", k=1))
    assert degraded.degraded == ("ranker",) and degraded.items and degraded.model_version == ""


async def test_pages_never_repeat_even_when_the_profile_moves(
    parts: tuple[Recommender, FakeRetrieval, FakeRanking],
) -> None:
    recommender, _, _ = parts
    await recommender.record_events([EventRecord("u", "c", "view", 1.0)])
    first = await recommender.recommend(rq("u", k=1))
    await recommender.record_events([EventRecord("u", "e", "view", 2.0)])  # the profile moves between pages
    shown = [first.items[0].item_id]
    result = first
    while result.has_more:
        result = await recommender.recommend(rq("u", k=1, page=PageRef(first.recommendation_id, result.page + 1)))
        shown += [i.item_id for i in result.items]
    assert len(shown) == len(set(shown)) and set(shown) <= {"a", "b", "d"} | {first.items[0].item_id}
    with pytest.raises(NotFoundError, match="first page"):
        await recommender.recommend(rq("u", page=PageRef("unknown", 2)))


async def test_rules_boost_pin_block(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, _, _ = parts
    plain = await recommender.recommend(rq(query="glue", k=3))
    assert [i.item_id for i in plain.items][:2] in (["c", "d"], ["d", "c"])
    boosted = await recommender.recommend(rq(query="glue", k=3, rules=Rules(boosts=(Boost(5.0, category="measure"),))))
    # The caliper does not match "glue": the boost is why it leads.
    assert boosted.items[0].item_id == "e" and boosted.items[0].evidence == "boost"
    assert boosted.items[0].reason == "Near your search “glue”; boosted for category “measure”"
    pinned = await recommender.recommend(rq(query="glue", k=3, rules=Rules(pins=(Pin("a", 2),), blocked=("d",))))
    assert [i.item_id for i in pinned.items][1] == "a" and pinned.items[1].pinned
    assert "d" not in [i.item_id for i in pinned.items]
    with pytest.raises(InvalidArgumentError, match="both pinned and blocked"):
        await recommender.recommend(rq(query="glue", k=3, rules=Rules(pins=(Pin("a", 1),), blocked=("a",))))
    with pytest.raises(InvalidArgumentError, match="position"):
        await recommender.recommend(rq(query="glue", k=3, rules=Rules(pins=(Pin("a", 4),))))


async def test_diversity_and_category_cap(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, _, _ = parts
    focused = await recommender.recommend(rq(context_item_ids=("a",), k=3, exclude_seen=False))
    capped = await recommender.recommend(rq(context_item_ids=("a",), k=3, rules=Rules(max_per_category=1)))
    categories = [i.categories[-1] for i in capped.items]
    assert len(categories) == len(set(categories))
    diverse = await recommender.recommend(rq(context_item_ids=("a",), k=3, rules=Rules(diversity=1.0)))
    assert len({i.categories[-1] for i in diverse.items}) >= len({i.categories[-1] for i in focused.items})


async def test_rotation_moves_over_shown_items_down(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, retrieval, _ = parts
    first = await recommender.recommend(rq("shy", k=1))
    for _ in range(3):
        await recommender.recommend(rq("shy", k=1))
    later = await recommender.recommend(rq("shy", k=1))
    assert first.items[0].item_id == "e" and later.items[0].item_id != "e"
    assert retrieval.profiles[("", "shy")].shown_counts["e"] >= 3


async def test_explain_fills_stage_scores(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, _, _ = parts
    await recommender.record_events([EventRecord("u", "a", "view", 1.0)])
    result = await recommender.recommend(rq("u", explain=True))
    scores = result.items[0].stage_scores
    assert {"retrieval", "ranker", "base", "boost", "rotation", "final", "redundancy"} <= set(scores)
    assert result.items[0].evidence == "a"
    quiet = await recommender.recommend(rq("u"))
    assert quiet.items[0].stage_scores == {}
    assert {"profile", "suggest", "retrieval", "ranker", "rules", "total"} <= set(quiet.stage_ms)
    assert all(ms >= 0 for ms in quiet.stage_ms.values())


async def test_experiment_arm_changes_the_settings(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, _, ranking = parts
    experiment = Experiment(
        name="pool",
        arms=(Arm(name="control"), Arm(name="old-model", model_version="v0", settings=ArmSettings(ranker_weight=0.0))),
    )
    recommender.experiments = Experiments([experiment])
    await recommender.record_events([EventRecord(f"u{n}", "a", "view", 1.0) for n in range(20)])
    arms = {}
    for n in range(20):
        result = await recommender.recommend(rq(f"u{n}"))
        assert result.experiment == "pool" and result.arm == experiment.assign(f"u{n}").name
        arms[result.arm] = result.model_version
    assert arms == {"control": "v1", "old-model": ""}  # the arm without the ranker never calls it
    assert all(version == "" for _, version in ranking.calls)


async def test_catalogs_are_kept_apart(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, retrieval, _ = parts
    await recommender.upsert_items([CatalogRecord("a", "Glue article")], catalog="news")
    found = await recommender.search("glue", 5, ItemFilter(), catalog="news")
    assert [i.item_id for i in found.items] == ["a"] and found.items[0].title == "Glue article"
    await recommender.record_events([EventRecord("u", "a", "view", 1.0)], catalog="news")
    assert ("news", "u") in retrieval.profiles and ("", "u") not in retrieval.profiles
    result = await recommender.recommend(rq("u", catalog="news"))
    assert result.model_version == "" and not result.degraded  # no model for the catalog: retrieval order
    with pytest.raises(InvalidArgumentError, match="catalog"):
        await recommender.recommend(rq("u", catalog="Bad Name"))


async def test_validation(parts: tuple[Recommender, FakeRetrieval, FakeRanking]) -> None:
    recommender, retrieval, _ = parts
    for k in (0, 11, -1):
        with pytest.raises(InvalidArgumentError, match=f"k is {k}"):
            await recommender.recommend(rq("u", k=k))
    with pytest.raises(InvalidArgumentError, match="diversity"):
        await recommender.recommend(rq("u", rules=Rules(diversity=1.5)))
    with pytest.raises(InvalidArgumentError, match="boosts"):
        await recommender.recommend(rq("u", rules=Rules(boosts=(Boost(1.0),))))
    with pytest.raises(InvalidArgumentError, match="context items"):
        await recommender.recommend(rq(context_item_ids=tuple(str(n) for n in range(51))))
    with pytest.raises(InvalidArgumentError, match="appears twice"):
        await recommender.upsert_items([CatalogRecord("x", "X"), CatalogRecord("x", "X")])
    with pytest.raises(InvalidArgumentError, match="reserved"):
        await recommender.upsert_items([CatalogRecord("x", "X", attributes={"popularity": 3.0})])
    with pytest.raises(InvalidArgumentError, match="unknown type"):
        await recommender.record_events([EventRecord("u", "a", "like", 1.0)])
    assert not retrieval.upserted and not retrieval.profiles


async def test_events_over_many_items_are_checked_in_retriever_sized_batches() -> None:
    retrieval = FakeRetrieval()
    asked: list[int] = []
    original = retrieval.get_items

    async def counting(catalog: str, item_ids: Sequence[str], skip_missing: bool) -> list[StoredItem]:
        asked.append(len(item_ids))
        return await original(catalog, item_ids, skip_missing)

    retrieval.get_items = counting  # type: ignore[method-assign]
    limits = RecommenderLimits(retriever_batch=2)
    recommender = Recommender(FakeText(), FakeEmbedding(), retrieval, FakeRanking(), limits, Blend(), {"view": 1.0})
    recorded = await recommender.record_events([EventRecord("u", i, "view", float(n)) for n, i in enumerate("abcde")])
    assert recorded.recorded == 5
    assert asked == [2, 2, 1]
    assert [e.item_id for e in retrieval.profiles[("", "u")].events] == list("abcde")


def test_page_tokens_round_trip_and_reject_forgeries() -> None:
    page = PageRef("0123abcd", 3)
    assert decode_page_token(encode_page_token(page, "f1"), "f1") == page
    assert decode_page_token("", "f1") is None
    unbound = base64.urlsafe_b64encode(b"rec:0123abcd:3").decode()  # the format before tokens were bound
    for bad in ("zzz", "b2Zmc2V0OnRlbg==", "!!", encode_page_token(PageRef("x", 1), "f1"), unbound):
        with pytest.raises(InvalidArgumentError, match="page_token is not one this service issued"):
            decode_page_token(bad, "f1")
    with pytest.raises(InvalidArgumentError, match="page_token belongs to a different request"):
        decode_page_token(encode_page_token(page, "f1"), "f2")


class SwitchingEncoders:
    """The retriever's serving encoder, switched once from "" to "v2" after the first request started."""

    def __init__(self) -> None:
        self.serving = ""
        self.told: list[str] = []

    async def current(self, catalog: str) -> str | None:
        return self.serving

    def changed(self, catalog: str, serving: str) -> None:
        self.told.append(serving)
        self.serving = serving


class RefusingRetrieval(FakeRetrieval):
    """Refuses the first search stamped with an encoder the retriever no longer serves, as the real one does."""

    def __init__(self, encoders: SwitchingEncoders) -> None:
        super().__init__()
        self.encoders = encoders
        self.stamps: list[str | None] = []

    async def search(
        self, catalog: str, vector: np.ndarray, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]:
        stamp = SERVING_ENCODER.get()
        self.stamps.append(stamp)
        if stamp != "v2":
            raise EncoderChangedError("v2")  # switched while the request was under way
        return await super().search(catalog, vector, limit, item_filter, exclude_ids)


async def test_a_request_that_meets_an_encoder_switch_runs_again_on_the_new_encoder() -> None:
    encoders = SwitchingEncoders()
    retrieval = RefusingRetrieval(encoders)
    recommender = Recommender(
        FakeText(),
        FakeEmbedding(),
        retrieval,
        FakeRanking(),
        RecommenderLimits(max_k=10, candidate_pool=5),
        Blend(),
        {"view": 1.0},
        encoders=encoders,
    )
    found = await recommender.search("glue", 2, ItemFilter())
    assert [i.item_id for i in found.items] == ["c", "d"]
    assert retrieval.stamps == ["", "v2"] and encoders.told == ["v2"]
    assert SERVING_ENCODER.get() is None  # nothing leaks out of the request
