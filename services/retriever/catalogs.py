"""Catalogs: named, fully separate sets of items, users and impressions in one retriever.

The default catalog (empty name) is the store the service always had: same folders or collections, no migration.
A named catalog lives beside it, in the same layout:
- embedded engine: `<data_dir>/catalogs/<name>/` (its own `items`, `users` and `feedback` shards);
- Qdrant server: collections `<name>__items`, `<name>__users` and `<name>__feedback` (the default keeps
  `items`, `users`, `feedback`; a catalog name cannot contain the upper case or dots a clash would need).

Catalogs open lazily. A write that stores something (UpsertItems, RecordImpression) creates its catalog; reads of
a catalog that was never written see an empty one (`EmptyStore`) and create nothing. At most `max_catalogs`
named catalogs exist; the write that would create one more fails with FAILED_PRECONDITION. After a restart the
existing ones are found on disk (or on the server) and open on first use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from qdrant_client import QdrantClient

from services.common.catalogs import DEFAULT_CATALOG, check_catalog, is_catalog_name
from services.common.errors import FailedPreconditionError, InvalidArgumentError
from services.retriever import feedback
from services.retriever.service import Retrieval, RetrievalObserver
from services.retriever.store import (
    Filter,
    Impression,
    Item,
    PayloadSchema,
    ScoredItem,
    SearchQuery,
    StoreInfo,
    UserEvent,
    UserProfile,
    VectorStore,
    not_found,
    validate_events,
    validate_filter,
    validate_id,
    validate_ids,
    validate_limit,
    validate_search_query,
)

COLLECTION_SEPARATOR = "__"


class CatalogStores(Protocol):
    """Where named catalogs live (a folder per catalog, or collections with the name as prefix)."""

    def exists(self, name: str) -> bool: ...

    def names(self) -> list[str]:
        """The named catalogs that exist, sorted."""
        ...

    def open(self, name: str) -> VectorStore:
        """Opens the catalog's store, creating it when missing."""
        ...


class FolderCatalogs:
    """Embedded engine: `<root>/<name>/`, each opened by `open_store(folder)`."""

    def __init__(self, root: Path, open_store: Callable[[Path], VectorStore]) -> None:
        self._root = root
        self._open_store = open_store

    def exists(self, name: str) -> bool:
        return (self._root / name).is_dir()

    def names(self) -> list[str]:
        if not self._root.is_dir():
            return []
        return sorted(p.name for p in self._root.iterdir() if p.is_dir() and is_catalog_name(p.name))

    def open(self, name: str) -> VectorStore:
        return self._open_store(self._root / name)


class CollectionCatalogs:
    """Qdrant server: collections `<name>__items`, `<name>__users`, `<name>__feedback`; `open_store(prefix)`
    opens a store on the collections with that prefix."""

    def __init__(self, client: QdrantClient, open_store: Callable[[str], VectorStore]) -> None:
        self._client = client
        self._open_store = open_store

    @staticmethod
    def prefix(name: str) -> str:
        return f"{name}{COLLECTION_SEPARATOR}"

    def exists(self, name: str) -> bool:
        return bool(self._client.collection_exists(f"{self.prefix(name)}items"))

    def names(self) -> list[str]:
        suffix = f"{COLLECTION_SEPARATOR}items"
        found = (c.name[: -len(suffix)] for c in self._client.get_collections().collections if c.name.endswith(suffix))
        return sorted(n for n in found if is_catalog_name(n))

    def open(self, name: str) -> VectorStore:
        return self._open_store(self.prefix(name))


class TimingsOnly:
    """Passes a catalog's query timings to the observer but not its size (the size gauges are the default's)."""

    def __init__(self, observer: RetrievalObserver) -> None:
        self._observer = observer

    def searched(self, operation: str, seconds: float) -> None:
        self._observer.searched(operation, seconds)

    def sized(self, items: int, indexed_vectors: int) -> None:
        return None


class CatalogRegistry:
    """Maps catalog names to a `Retrieval` each; the servicer picks one per request."""

    def __init__(
        self,
        default: Retrieval,
        stores: CatalogStores,
        make_retrieval: Callable[[VectorStore], Retrieval],
        max_catalogs: int,
    ) -> None:
        self.default = default
        self._stores = stores
        self._make = make_retrieval
        self._max = max_catalogs
        self._open: dict[str, Retrieval] = {}
        self._lock = asyncio.Lock()
        store = default.store
        backend = getattr(store, "backend", "unknown")
        self._empty = make_retrieval(EmptyStore(store.dimension, store.schema, backend))

    @property
    def opened(self) -> dict[str, Retrieval]:
        """The default (under "") and every named catalog opened so far."""
        return {DEFAULT_CATALOG: self.default, **self._open}

    async def for_read(self, name: str) -> Retrieval:
        """The catalog, or an empty read-only stand-in when it was never written (nothing is created)."""
        name = check_catalog(name)
        if name == DEFAULT_CATALOG:
            return self.default
        found = self._open.get(name)
        if found is not None:
            return found
        if not await asyncio.to_thread(self._stores.exists, name):
            return self._empty
        return await self._get(name, create=False)

    async def for_write(self, name: str) -> Retrieval:
        """The catalog, created when missing (FailedPreconditionError past the limit)."""
        name = check_catalog(name)
        if name == DEFAULT_CATALOG:
            return self.default
        found = self._open.get(name)
        if found is not None:
            return found
        return await self._get(name, create=True)

    async def _get(self, name: str, create: bool) -> Retrieval:
        async with self._lock:
            found = self._open.get(name)
            if found is not None:
                return found
            if create and not await asyncio.to_thread(self._stores.exists, name):
                existing = await asyncio.to_thread(self._stores.names)
                if len(existing) >= self._max:
                    raise FailedPreconditionError(
                        f"catalog {name!r} would be catalog number {len(existing) + 1} besides the default, and "
                        f"RETRIEVER_MAX_CATALOGS is {self._max}: raise RETRIEVER_MAX_CATALOGS or use an existing "
                        f"catalog"
                    )
            store = await asyncio.to_thread(self._stores.open, name)
            retrieval = self._make(store)
            self._open[name] = retrieval
            return retrieval

    async def close(self) -> None:
        """Closes the named catalogs, then the default (which may own the shared client)."""
        for retrieval in self._open.values():
            await retrieval.close()
        self._open.clear()
        await self._empty.close()
        await self.default.close()


class EmptyStore:
    """A catalog that was never written: validates like a real store, finds nothing, refuses writes."""

    def __init__(self, dimension: int, schema: PayloadSchema, backend: str) -> None:
        self._dimension = dimension
        self._schema = schema
        self.backend = backend

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def schema(self) -> PayloadSchema:
        return self._schema

    @property
    def index_ready(self) -> bool:
        return True

    def upsert_items(self, items: Sequence[Item]) -> int:
        raise RuntimeError("an empty catalog takes no writes; open it for writing")

    def delete_items(self, ids: Sequence[str]) -> int:
        validate_ids(ids, "item id")
        return 0

    def get_items(self, ids: Sequence[str], with_vectors: bool = False, skip_missing: bool = False) -> list[Item]:
        wanted = validate_ids(ids, "item id")
        if wanted and not skip_missing:
            raise not_found("item", list(dict.fromkeys(wanted)))
        return []

    def count_items(self) -> int:
        return 0

    def search(self, queries: Sequence[SearchQuery]) -> list[list[ScoredItem]]:
        for index, query in enumerate(queries):
            validate_search_query(query, self._dimension, self._schema, index)
        return [[] for _ in queries]

    def recommend(
        self,
        positive_ids: Sequence[str],
        negative_ids: Sequence[str] = (),
        limit: int = 10,
        filter: Filter | None = None,
        exclude_ids: Sequence[str] = (),
    ) -> list[ScoredItem]:
        examples = list(dict.fromkeys([*validate_ids(positive_ids, "positive item id"), *negative_ids]))
        validate_limit(limit)
        validate_filter(filter, self._schema)
        if not examples:
            raise InvalidArgumentError("recommend needs at least one positive or negative example")
        raise not_found("example item", examples)

    def popular(
        self,
        limit: int = 10,
        filter: Filter | None = None,
        exclude_ids: Sequence[str] = (),
        offset: int = 0,
    ) -> list[ScoredItem]:
        validate_limit(limit, offset)
        validate_filter(filter, self._schema)
        return []

    def append_user_events(self, user_id: str, events: Sequence[UserEvent]) -> UserProfile:
        # Every event's item must exist, and an empty catalog has none: NOT_FOUND, nothing created.
        validate_id(user_id, "user id")
        valid = validate_events(events)
        raise not_found("item", list(dict.fromkeys(e.item_id for e in valid)))

    def get_user(self, user_id: str) -> UserProfile:
        validate_id(user_id, "user id")
        raise not_found("user", [user_id])

    def delete_user(self, user_id: str) -> None:
        validate_id(user_id, "user id")
        raise not_found("user", [user_id])

    def count_users(self) -> int:
        return 0

    def record_impression(self, impression: Impression) -> None:
        raise RuntimeError("an empty catalog takes no writes; open it for writing")

    def get_impressions(self, recommendation_id: str) -> list[Impression]:
        feedback.validate_recommendation_id(recommendation_id)
        raise not_found("recommendation", [recommendation_id])

    def list_impressions(self, experiment: str, limit: int, page_token: str) -> tuple[list[Impression], str]:
        feedback.validate_list(experiment, limit, page_token)
        return [], ""

    def info(self) -> StoreInfo:
        return StoreInfo(
            backend=self.backend,
            items=0,
            users=0,
            indexed_vectors=0,
            dimension=self._dimension,
            distance="cosine",
            payload_indexes=(),
            index_ready=True,
        )

    def close(self) -> None:
        return None
