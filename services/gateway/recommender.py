"""The gateway's domain: composes text cleaning, embedding, retrieval and ranking into the public API."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from services.common.errors import InvalidArgumentError, ServiceError, UnavailableError
from services.gateway.fallbacks import PopularCache, raw_query
from services.gateway.model import (
    BackendUnavailableError,
    CatalogRecord,
    EmbeddingPort,
    EventRecord,
    HistoryEvent,
    ItemFilter,
    NewItem,
    RankingPort,
    Recommendation,
    RecommendResult,
    RetrievalPort,
    SearchResult,
    StoredItem,
    TextPort,
)

log = structlog.get_logger(__name__)

# Payload keys the gateway owns; catalog attributes may not overwrite them.
RESERVED_KEYS = frozenset({"item_id", "title", "categories", "popularity", "description"})
PAST_TENSE = {"view": "viewed", "click": "clicked", "add_to_cart": "added to your cart", "purchase": "bought"}


@dataclass(frozen=True)
class RecommenderLimits:
    max_k: int = 100
    max_offset: int = 1000
    candidate_pool: int = 100
    max_filter_conditions: int = 64
    max_query_chars: int = 2048
    max_text_chars: int = 100_000
    max_items_per_upsert: int = 512
    max_events_per_call: int = 1000
    max_id_chars: int = 256
    history_for_ranking: int = 50
    max_parallel_writes: int = 8
    popular_cache_size: int = 200


@dataclass(frozen=True)
class Blend:
    """How signals combine. The ranker's scores and the retrieval similarities are put on one scale
    (z-scores over the candidate pool) and mixed; a query pulls the profile vector towards itself."""

    ranker_weight: float = 0.5
    query_weight: float = 0.5


def _zscores(values: np.ndarray) -> np.ndarray:
    std = float(values.std())
    return (values - values.mean()) / std if std > 1e-9 else np.zeros_like(values)


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _quote(title: str, limit: int = 60) -> str:
    return f"“{title if len(title) <= limit else title[: limit - 1].rstrip() + '…'}”"


class Recommender:
    def __init__(
        self,
        text: TextPort,
        embedding: EmbeddingPort,
        retrieval: RetrievalPort,
        ranking: RankingPort,
        limits: RecommenderLimits,
        blend: Blend,
        event_weights: Mapping[str, float],
    ) -> None:
        self.text = text
        self.embedding = embedding
        self.retrieval = retrieval
        self.ranking = ranking
        self.limits = limits
        self.blend = blend
        self.event_weights = event_weights
        self.popular_cache = PopularCache(retrieval, limits.popular_cache_size)

    # ---- validation ----------------------------------------------------------------------------------

    def _k(self, k: int) -> int:
        if not 1 <= k <= self.limits.max_k:
            raise InvalidArgumentError(f"k is {k}; ask for 1 to {self.limits.max_k} items")
        return k

    def _check_id(self, value: str, what: str) -> None:
        if not value or not value.strip():
            raise InvalidArgumentError(f"{what} is empty: give the id")
        if len(value) > self.limits.max_id_chars:
            raise InvalidArgumentError(
                f"{what} has {len(value)} characters; ids are at most {self.limits.max_id_chars}"
            )

    def _check_filter(self, item_filter: ItemFilter) -> None:
        if item_filter.size() > self.limits.max_filter_conditions:
            raise InvalidArgumentError(
                f"the filter has {item_filter.size()} conditions; the limit is {self.limits.max_filter_conditions}"
            )

    def _check_query(self, query: str) -> None:
        if len(query) > self.limits.max_query_chars:
            raise InvalidArgumentError(
                f"the query has {len(query)} characters; the limit is {self.limits.max_query_chars}: shorten it"
            )

    async def _query_vector(self, query: str, degraded: list[str], optional: bool) -> np.ndarray | None:
        """The query's vector; None when nothing searchable is left. A preprocessor outage falls back to the
        raw text; an embedding outage raises UnavailableError. An optional query (one with a fallback) is
        embedded on a short deadline; a required one may use the caller's whole remaining time."""
        try:
            cleaned = await self.text.clean_query(query)
        except UnavailableError as error:
            log.warning("preprocessor unavailable; embedding the raw query", error=str(error))
            degraded.append("preprocessor")
            cleaned = raw_query(query)
        if not cleaned:
            return None
        if optional:
            return await self.embedding.embed_query(cleaned)
        vectors = await self.embedding.embed([cleaned])
        first: np.ndarray = vectors[0]
        return first

    async def _optional_query_vector(self, query: str, degraded: list[str]) -> np.ndarray | None:
        if not query.strip():
            return None
        try:
            return await self._query_vector(query, degraded, optional=True)
        except UnavailableError as error:
            log.warning("embedding unavailable; recommending without the query", error=str(error))
            degraded.append("embedding")
            return None

    def _from_cache(self, k: int, offset: int, item_filter: ItemFilter, degraded: list[str]) -> RecommendResult:
        """Popular items from the cache while the retriever is down; UNAVAILABLE at once when it is empty."""
        cached = self.popular_cache.page(k + 1, offset, item_filter)
        if cached is None:
            raise UnavailableError("the retriever is down and no popular items are cached yet; retry shortly")
        log.warning("retriever unavailable; serving cached popular items")
        items = tuple(self._popular_item(item) for item in cached[:k])
        next_offset = offset + k if len(cached) > k else None
        return RecommendResult(items, next_offset, "popular", "", _stages([*degraded, "retriever"]))

    @staticmethod
    def _popular_item(item: StoredItem) -> Recommendation:
        reason = f"Popular: {int(item.score)} interactions" if item.score > 0 else "New in the catalog"
        return Recommendation(item.item_id, item.score, reason, item.title, item.categories)

    # ---- Recommend -----------------------------------------------------------------------------------

    async def recommend(
        self,
        user_id: str,
        query: str,
        k: int,
        item_filter: ItemFilter,
        exclude_seen: bool,
        offset: int,
    ) -> RecommendResult:
        self._check_id(user_id, "user_id")
        self._check_query(query)
        self._check_filter(item_filter)
        k = self._k(k)
        if not 0 <= offset <= self.limits.max_offset:
            raise InvalidArgumentError(f"offset {offset} is beyond the last page ({self.limits.max_offset})")

        degraded: list[str] = []
        try:
            return await self._recommend(user_id, query, k, item_filter, exclude_seen, offset, degraded)
        except BackendUnavailableError as error:
            if error.stage != "retriever":
                raise
            return self._from_cache(k, offset, item_filter, degraded)

    async def _recommend(
        self,
        user_id: str,
        query: str,
        k: int,
        item_filter: ItemFilter,
        exclude_seen: bool,
        offset: int,
        degraded: list[str],
    ) -> RecommendResult:
        profile, query_vector = await asyncio.gather(
            self.retrieval.get_profile(user_id), self._optional_query_vector(query, degraded)
        )
        events = profile.events if profile else ()
        seen = list(dict.fromkeys(e.item_id for e in events))
        exclude = seen if exclude_seen else []
        profile_vector = profile.vector if profile is not None else None

        if profile_vector is None and query_vector is None:
            popular = await self.retrieval.popular(k + 1, offset, item_filter, exclude)
            items = tuple(self._popular_item(item) for item in popular[:k])
            next_offset = offset + k if len(popular) > k else None
            return RecommendResult(items, next_offset, "popular", "", _stages(degraded))

        if profile_vector is not None and query_vector is not None:
            w = self.blend.query_weight
            target = _unit((1 - w) * profile_vector + w * query_vector)
            strategy = "personalised+query"
        elif profile_vector is not None:
            target, strategy = profile_vector, "personalised"
        else:
            assert query_vector is not None
            target, strategy = query_vector, "query"

        # A fixed pool for every page keeps the order stable, so pages never repeat items.
        pool = max(self.limits.candidate_pool, offset + k + 1)
        history_ids = seen[-self.limits.history_for_ranking :]
        candidates, history = await asyncio.gather(
            self.retrieval.search(target, pool, item_filter, exclude),
            self.retrieval.get_items(history_ids, skip_missing=True) if history_ids else _empty(),
        )
        if not candidates:
            return RecommendResult((), None, strategy, "", _stages(degraded))
        similarity = np.asarray([c.score for c in candidates], dtype=np.float64)
        scores, model_version = await self._rank(user_id, history, candidates, similarity, degraded)
        order = np.argsort(-scores, kind="stable")
        page = order[offset : offset + k]
        events_by_item = {e.item_id: e for e in events}
        items = tuple(
            Recommendation(
                candidates[i].item_id,
                float(scores[i]),
                self._reason(candidates[i], history, events_by_item, query, query_vector),
                candidates[i].title,
                candidates[i].categories,
            )
            for i in page
        )
        next_offset = offset + k if len(order) > offset + k else None
        return RecommendResult(items, next_offset, strategy, model_version, _stages(degraded))

    async def _rank(
        self,
        user_id: str,
        history: Sequence[StoredItem],
        candidates: Sequence[StoredItem],
        similarity: np.ndarray,
        degraded: list[str],
    ) -> tuple[np.ndarray, str]:
        if not history or self.blend.ranker_weight <= 0:
            return similarity, ""
        try:
            ranking = await self.ranking.score(user_id, history, candidates)
        except ServiceError as error:
            # The retrieval order is a sound answer on its own; a ranker outage must not fail the call.
            log.warning("ranker unavailable; using retrieval order", error=str(error))
            degraded.append("ranker")
            return similarity, ""
        w = self.blend.ranker_weight
        blended = w * _zscores(ranking.scores.astype(np.float64)) + (1 - w) * _zscores(similarity)
        return blended, ranking.model_version

    def _reason(
        self,
        candidate: StoredItem,
        history: Sequence[StoredItem],
        events_by_item: Mapping[str, HistoryEvent],
        query: str,
        query_vector: np.ndarray | None,
    ) -> str:
        best: tuple[float, str] = (-math.inf, "")
        if candidate.vector is not None:
            for item in history:
                if item.vector is None:
                    continue
                similarity = float(candidate.vector @ item.vector)
                if similarity > best[0]:
                    event = events_by_item.get(item.item_id)
                    verb = PAST_TENSE.get(event.event_type, "viewed") if event else "viewed"
                    best = (similarity, f"Similar to {_quote(item.title)}, which you {verb}")
            if query_vector is not None:
                similarity = float(candidate.vector @ query_vector)
                if similarity >= best[0]:
                    best = (similarity, f"Matches your search {_quote(query.strip())}")
        return best[1] or "Recommended for you"

    # ---- similar items and search -------------------------------------------------------------------

    async def similar_items(self, item_id: str, k: int, item_filter: ItemFilter) -> list[Recommendation]:
        self._check_id(item_id, "item_id")
        self._check_filter(item_filter)
        k = self._k(k)
        (source,) = await self.retrieval.get_items([item_id], skip_missing=False)
        found = await self.retrieval.similar(item_id, k, item_filter, [])
        reason = f"Similar to {_quote(source.title)}"
        return [Recommendation(i.item_id, i.score, reason, i.title, i.categories) for i in found]

    async def search(self, query: str, k: int, item_filter: ItemFilter) -> SearchResult:
        if not query.strip():
            raise InvalidArgumentError("query is empty: give the text to search for")
        self._check_query(query)
        self._check_filter(item_filter)
        k = self._k(k)
        degraded: list[str] = []
        vector = await self._query_vector(query, degraded, optional=False)
        if vector is None:
            raise InvalidArgumentError("the query has no searchable text after cleaning (markup or symbols only)")
        found = await self.retrieval.search(vector, k, item_filter, [])
        reason = f"Matches {_quote(query.strip())}"
        items = tuple(Recommendation(i.item_id, i.score, reason, i.title, i.categories) for i in found)
        return SearchResult(items, _stages(degraded))

    # ---- writes --------------------------------------------------------------------------------------

    async def upsert_items(self, records: Sequence[CatalogRecord]) -> tuple[int, int]:
        """Preprocess, embed, index. Returns (items written, texts truncated)."""
        if not records:
            raise InvalidArgumentError("items is empty: send at least one item")
        if len(records) > self.limits.max_items_per_upsert:
            raise InvalidArgumentError(
                f"{len(records)} items in one call; the limit is {self.limits.max_items_per_upsert}: split it"
            )
        seen: set[str] = set()
        for index, record in enumerate(records):
            self._check_id(record.item_id, f"items[{index}].item_id")
            if record.item_id in seen:
                raise InvalidArgumentError(f"items[{index}].item_id {record.item_id!r} appears twice")
            seen.add(record.item_id)
            if not record.title.strip():
                raise InvalidArgumentError(f"items[{index}] ({record.item_id}) has no title")
            for name, text in (("title", record.title), ("description", record.description)):
                if len(text) > self.limits.max_text_chars:
                    raise InvalidArgumentError(
                        f"items[{index}].{name} has {len(text)} characters; the limit is "
                        f"{self.limits.max_text_chars} (the model reads about 1,000): shorten it"
                    )
            clash = RESERVED_KEYS & set(record.attributes)
            if clash:
                raise InvalidArgumentError(f"items[{index}] attributes use reserved names {sorted(clash)}: rename them")
        texts = await self.text.build_item_texts(records)
        vectors = await self.embedding.embed([t.text for t in texts])
        items = [
            NewItem(
                record.item_id,
                vector,
                {
                    "title": record.title.strip(),
                    "categories": list(record.categories),
                    **record.attributes,
                },
            )
            for record, vector in zip(records, vectors, strict=True)
        ]
        written = await self.retrieval.upsert_items(items)
        return written, sum(t.truncated for t in texts)

    async def record_events(self, events: Sequence[EventRecord]) -> int:
        if not events:
            raise InvalidArgumentError("events is empty: send at least one event")
        if len(events) > self.limits.max_events_per_call:
            raise InvalidArgumentError(
                f"{len(events)} events in one call; the limit is {self.limits.max_events_per_call}: split it"
            )
        now = time.time()
        for index, event in enumerate(events):
            self._check_id(event.user_id, f"events[{index}].user_id")
            self._check_id(event.item_id, f"events[{index}].item_id")
            if event.event_type not in self.event_weights:
                raise InvalidArgumentError(f"events[{index}] has unknown type {event.event_type!r}")
            if not (math.isfinite(event.timestamp) and 0 <= event.timestamp <= now + 86_400):
                raise InvalidArgumentError(f"events[{index}] time is not a valid time up to now")
        # Check every item first, so a bad event stores nothing.
        await self.retrieval.get_items(list(dict.fromkeys(e.item_id for e in events)), skip_missing=False)
        by_user: dict[str, list[HistoryEvent]] = {}
        for event in sorted(events, key=lambda e: e.timestamp):
            weight = self.event_weights[event.event_type]
            by_user.setdefault(event.user_id, []).append(
                HistoryEvent(event.item_id, event.event_type, event.timestamp, weight)
            )
        # Bounded fan-out: a batch of many users must not exceed the retriever's admission limit.
        parallel = asyncio.Semaphore(self.limits.max_parallel_writes)

        async def append(user_id: str, user_events: list[HistoryEvent]) -> None:
            async with parallel:
                await self.retrieval.append_events(user_id, user_events)

        await asyncio.gather(*(append(u, evs) for u, evs in by_user.items()))
        return len(events)

    async def delete_user(self, user_id: str) -> None:
        self._check_id(user_id, "user_id")
        await self.retrieval.delete_user(user_id)
        # The user's events no longer count towards popularity; the cache must not keep their trace.
        self.popular_cache.clear()
        with contextlib.suppress(UnavailableError):
            await self.popular_cache.refresh()


def _stages(degraded: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(degraded))


async def _empty() -> list[StoredItem]:
    return []
