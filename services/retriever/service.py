"""The retriever's domain entry: request limits, engine calls on worker threads, and the policy that starts
a background HNSW build once enough items are unindexed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar, runtime_checkable

import structlog

from services.common.errors import InvalidArgumentError
from services.retriever.store import (
    Filter,
    Item,
    ScoredItem,
    SearchQuery,
    StoreInfo,
    UserEvent,
    UserProfile,
    VectorStore,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")


@runtime_checkable
class BuildsIndexInBackground(Protocol):
    def start_index_build(self) -> bool: ...


class Retrieval:
    def __init__(
        self, store: VectorStore, max_limit: int, max_batch: int, index_min_unindexed: int, workers: int
    ) -> None:
        self.store = store
        self.max_limit = max_limit
        self.max_batch = max_batch
        self.index_min_unindexed = index_min_unindexed
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engine")

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _check_batch(self, count: int, what: str) -> None:
        if count == 0:
            raise InvalidArgumentError(f"{what} is empty: send at least one")
        if count > self.max_batch:
            raise InvalidArgumentError(f"{count} {what} in one call; the limit is {self.max_batch}: split it")

    def _check_limit(self, limit: int) -> None:
        if not 1 <= limit <= self.max_limit:
            raise InvalidArgumentError(f"limit is {limit}; ask for 1 to {self.max_limit} results")

    async def upsert_items(self, items: Sequence[Item]) -> int:
        self._check_batch(len(items), "items")
        written = await self._run(self.store.upsert_items, items)
        await self._maybe_build_index()
        return written

    async def _maybe_build_index(self) -> None:
        if not isinstance(self.store, BuildsIndexInBackground):
            return
        info = await self._run(self.store.info)
        if info.items - info.indexed_vectors >= self.index_min_unindexed and self.store.start_index_build():
            log.info("background index build started", items=info.items, indexed=info.indexed_vectors)

    async def delete_items(self, ids: Sequence[str]) -> int:
        self._check_batch(len(ids), "item_ids")
        return await self._run(self.store.delete_items, ids)

    async def get_items(self, ids: Sequence[str], with_vectors: bool, skip_missing: bool) -> list[Item]:
        self._check_batch(len(ids), "item_ids")
        return await self._run(self.store.get_items, ids, with_vectors, skip_missing)

    async def search(self, queries: Sequence[SearchQuery]) -> list[list[ScoredItem]]:
        self._check_batch(len(queries), "queries")
        for query in queries:
            self._check_limit(query.limit)
        return await self._run(self.store.search, queries)

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
        return await self._run(self.store.recommend, positive_ids, negative_ids, limit, filter, exclude_ids)

    async def popular(self, limit: int, filter: Filter, exclude_ids: Sequence[str], offset: int) -> list[ScoredItem]:
        self._check_limit(limit)
        return await self._run(self.store.popular, limit, filter, exclude_ids, offset)

    async def append_user_events(self, user_id: str, events: Sequence[UserEvent]) -> UserProfile:
        self._check_batch(len(events), "events")
        return await self._run(self.store.append_user_events, user_id, events)

    async def get_user(self, user_id: str) -> UserProfile:
        return await self._run(self.store.get_user, user_id)

    async def delete_user(self, user_id: str) -> None:
        await self._run(self.store.delete_user, user_id)

    async def info(self) -> StoreInfo:
        return await self._run(self.store.info)

    async def close(self) -> None:
        await self._run(self.store.close)
        self._executor.shutdown(wait=True)
