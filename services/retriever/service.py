"""The retriever's domain entry: request limits, engine calls on worker threads, and the policy that starts
a background HNSW build: once enough items are unindexed, and once writes have stopped for a while with fewer
unindexed items left (the tail of a bulk load)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar, runtime_checkable

import structlog

from services.common.errors import InvalidArgumentError
from services.retriever import feedback
from services.retriever.store import (
    EncoderState,
    Filter,
    Impression,
    Item,
    ScoredItem,
    SearchQuery,
    StoreInfo,
    UserEvent,
    UserProfile,
    VectorStore,
    validate_items,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")


@runtime_checkable
class BuildsIndexInBackground(Protocol):
    def start_index_build(self) -> bool: ...


class RetrievalObserver(Protocol):
    """Told the time of every engine query and the collection's size after writes (metrics implement it)."""

    def searched(self, operation: str, seconds: float) -> None: ...

    def sized(self, items: int, indexed_vectors: int) -> None: ...


class Retrieval:
    def __init__(
        self,
        store: VectorStore,
        max_limit: int,
        max_batch: int,
        index_min_unindexed: int,
        workers: int,
        observer: RetrievalObserver | None = None,
        *,
        max_exclude_ids: int = 10_000,
        max_filter_values: int = 1_000,
        executor: ThreadPoolExecutor | None = None,
        index_idle_s: float = 0.0,
        index_idle_min_unindexed: int = 1,
    ) -> None:
        self.store = store
        self.max_exclude_ids = max_exclude_ids
        self.max_filter_values = max_filter_values
        self.observer = observer
        self.max_limit = max_limit
        self.max_batch = max_batch
        self.index_min_unindexed = index_min_unindexed
        self.index_idle_s = index_idle_s
        self.index_idle_min_unindexed = index_idle_min_unindexed
        # When the last write (or the start) happened, until a quiet spell after it has been checked; a restart
        # after a bulk load is a quiet spell too.
        self._quiet_since: float | None = time.monotonic()
        # Catalogs share one pool (passed in); a Retrieval that made its own shuts it down on close.
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engine")

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _query(self, operation: str, function: Callable[..., T], *args: object) -> T:
        started = time.perf_counter()
        result = await self._run(function, *args)
        if self.observer is not None:
            self.observer.searched(operation, time.perf_counter() - started)
        return result

    def _check_batch(self, count: int, what: str) -> None:
        if count == 0:
            raise InvalidArgumentError(f"{what} is empty: send at least one")
        if count > self.max_batch:
            raise InvalidArgumentError(f"{count} {what} in one call; the limit is {self.max_batch}: split it")

    def _check_query_size(self, filter: Filter | None, exclude_ids: Sequence[str]) -> None:
        if len(exclude_ids) > self.max_exclude_ids:
            raise InvalidArgumentError(
                f"{len(exclude_ids)} excluded ids; the limit is {self.max_exclude_ids}: send the most recent"
            )
        if filter is not None:
            size = (
                len(filter.categories_any)
                + sum(len(v) + 1 for v in filter.keywords.values())
                + len(filter.ranges)
                + len(filter.flags)
            )
            if size > self.max_filter_values:
                raise InvalidArgumentError(
                    f"the filter has {size} conditions and values; the limit is {self.max_filter_values}"
                )

    def _check_limit(self, limit: int) -> None:
        if not 1 <= limit <= self.max_limit:
            raise InvalidArgumentError(f"limit is {limit}; ask for 1 to {self.max_limit} results")

    def check_upsert(self, items: Sequence[Item]) -> None:
        """Refuses a bad batch before anything is opened or created (the store checks again when writing)."""
        self._check_batch(len(items), "items")
        validate_items(items, self.store.dimension, self.store.schema)

    def check_impression(self, impression: Impression) -> None:
        if len(impression.item_ids) > self.max_batch:
            raise InvalidArgumentError(
                f"the impression shows {len(impression.item_ids)} items; the limit is {self.max_batch} "
                f"(RETRIEVER_MAX_BATCH): record what was shown on the page, at most that many"
            )
        feedback.validate_impression(impression)

    async def upsert_items(
        self, items: Sequence[Item], encoder_version: str | None = None, staged: bool = False
    ) -> int:
        self._check_batch(len(items), "items")
        written = await self._run(self.store.upsert_items, items, encoder_version, staged)
        self._quiet_since = time.monotonic()
        await self.check_index()
        return written

    async def check_index(self) -> None:
        """Reports the size, and starts a background HNSW build once enough items are unindexed (after writes,
        and at start-up: a restart during a build, or before a burst's tail was indexed, builds then)."""
        if self.observer is None and not isinstance(self.store, BuildsIndexInBackground):
            return
        info = await self.info()
        if (
            isinstance(self.store, BuildsIndexInBackground)
            and info.items - info.indexed_vectors >= self.index_min_unindexed
            and self.store.start_index_build()
        ):
            log.info("background index build started", items=info.items, indexed=info.indexed_vectors)

    async def build_index_if_idle(self) -> bool:
        """Once no write has come for `index_idle_s` (0: never), starts a background build when at least
        `index_idle_min_unindexed` items are unindexed, fewer than the count that starts one after writes: the
        tail of a bulk load is otherwise searched exactly until the next large burst. One build per quiet spell
        (retried while another build runs); True when one started."""
        quiet_since = self._quiet_since
        if (
            not self.index_idle_s
            or quiet_since is None
            or time.monotonic() - quiet_since < self.index_idle_s
            or not isinstance(self.store, BuildsIndexInBackground)
        ):
            return False
        info = await self.info()
        unindexed = info.items - info.indexed_vectors
        if unindexed < self.index_idle_min_unindexed:
            self._quiet_since = None
            return False
        started = self.store.start_index_build()
        if started:
            self._quiet_since = None
            log.info(
                "background index build started after writes stopped",
                idle_s=round(time.monotonic() - quiet_since, 1),
                unindexed=unindexed,
            )
        return started

    async def delete_items(self, ids: Sequence[str]) -> int:
        self._check_batch(len(ids), "item_ids")
        deleted = await self._run(self.store.delete_items, ids)
        if deleted:
            self._quiet_since = time.monotonic()
        await self.check_index()
        return deleted

    async def get_items(
        self, ids: Sequence[str], with_vectors: bool, skip_missing: bool, encoder_version: str | None = None
    ) -> list[Item]:
        self._check_batch(len(ids), "item_ids")
        return await self._run(self.store.get_items, ids, with_vectors, skip_missing, encoder_version)

    async def search(
        self, queries: Sequence[SearchQuery], encoder_version: str | None = None
    ) -> list[list[ScoredItem]]:
        self._check_batch(len(queries), "queries")
        for query in queries:
            self._check_limit(query.limit)
            self._check_query_size(query.filter, query.exclude_ids)
            if len(query.only_ids) > self.max_exclude_ids:
                raise InvalidArgumentError(
                    f"{len(query.only_ids)} only_ids; the limit is {self.max_exclude_ids} (RETRIEVER_MAX_EXCLUDE_IDS)"
                )
        return await self._query("search", self.store.search, queries, encoder_version)

    async def recommend(
        self,
        positive_ids: Sequence[str],
        negative_ids: Sequence[str],
        limit: int,
        filter: Filter,
        exclude_ids: Sequence[str],
    ) -> list[ScoredItem]:
        if not positive_ids:
            raise InvalidArgumentError("positive_ids is empty: give at least one example item")
        self._check_limit(limit)
        self._check_query_size(filter, [*positive_ids, *negative_ids, *exclude_ids])
        return await self._query(
            "recommend", self.store.recommend, positive_ids, negative_ids, limit, filter, exclude_ids
        )

    async def popular(self, limit: int, filter: Filter, exclude_ids: Sequence[str], offset: int) -> list[ScoredItem]:
        self._check_limit(limit)
        self._check_query_size(filter, exclude_ids)
        return await self._query("popular", self.store.popular, limit, filter, exclude_ids, offset)

    async def append_user_events(self, user_id: str, events: Sequence[UserEvent]) -> tuple[UserProfile, list[str]]:
        """The profile after the events, and the recommendation ids they named that no impression has."""
        self._check_batch(len(events), "events")
        profile = await self._run(self.store.append_user_events, user_id, events)
        return profile, await self._run(self.store.unknown_recommendations, events)

    async def get_user(self, user_id: str) -> UserProfile:
        return await self._run(self.store.get_user, user_id)

    async def delete_user(self, user_id: str) -> None:
        await self._run(self.store.delete_user, user_id)

    async def record_impressions(self, impressions: Sequence[Impression]) -> None:
        self._check_batch(len(impressions), "impressions")
        for impression in impressions:
            self.check_impression(impression)
        await self._run(self.store.record_impressions, impressions)

    async def get_impressions(self, recommendation_id: str) -> list[Impression]:
        return await self._run(self.store.get_impressions, recommendation_id)

    async def list_impressions(self, experiment: str, limit: int, page_token: str) -> tuple[list[Impression], str]:
        return await self._run(self.store.list_impressions, experiment, limit, page_token)

    async def list_items(self, encoder_version: str | None, offset: str, limit: int) -> tuple[list[Item], str]:
        return await self._run(self.store.list_items, encoder_version, offset, limit)

    async def encoders(self) -> EncoderState:
        return await self._run(self.store.encoders)

    async def stage_encoder(self, version: str) -> EncoderState:
        state = await self._run(self.store.stage_encoder, version)
        log.info("encoder staged", encoder=version, staged_items=state.staged_items)
        return state

    async def switch_encoder(self, version: str) -> EncoderState:
        state = await self._run(self.store.switch_encoder, version)
        log.info("encoder switched", serving=state.serving, kept_for_rollback=state.staged)
        return state

    async def drop_staged_encoder(self, version: str) -> EncoderState:
        state = await self._run(self.store.drop_staged_encoder, version)
        log.info("staged encoder dropped", encoder=version)
        return state

    async def info(self) -> StoreInfo:
        info = await self._run(self.store.info)
        if self.observer is not None:
            self.observer.sized(info.items, info.indexed_vectors)
        return info

    async def close(self) -> None:
        await self._run(self.store.close)
        if self._owns_executor:
            self._executor.shutdown(wait=True)
