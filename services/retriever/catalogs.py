"""Catalogs: named, fully separate sets of items, users and impressions in one retriever.

The default catalog (empty name) is the store the service always had: same folders or collections, no migration.
A named catalog lives beside it, in the same layout:
- embedded engine: `<data_dir>/catalogs/<name>/` (its own `items`, `users`, `events` and `feedback` shards);
- Qdrant server: collections `<name>__items`, `<name>__users`, `<name>__events` and `<name>__feedback` (the
  default keeps `items`, `users`, `events`, `feedback`; a catalog name cannot contain the upper case or dots a
  clash would need).

Catalogs open lazily. A write that stores something (UpsertItems, RecordImpression) creates its catalog; any other
call on a catalog that was never written is NOT_FOUND, naming the catalogs that exist (a typo must not read as an
empty catalog), and creates nothing. At most `max_catalogs`
named catalogs exist; the write that would create one more fails with FAILED_PRECONDITION. After a restart the
existing ones are found on disk (or on the server) and open on first use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from qdrant_client import QdrantClient

from services.common.catalogs import DEFAULT_CATALOG, check_catalog, is_catalog_name
from services.common.errors import FailedPreconditionError, NotFoundError
from services.retriever.service import Retrieval, RetrievalObserver
from services.retriever.store import VectorStore

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

    @property
    def opened(self) -> dict[str, Retrieval]:
        """The default (under "") and every named catalog opened so far."""
        return {DEFAULT_CATALOG: self.default, **self._open}

    async def for_read(self, name: str) -> Retrieval:
        """The catalog; NotFoundError when it was never written (nothing is created)."""
        name = check_catalog(name)
        if name == DEFAULT_CATALOG:
            return self.default
        found = self._open.get(name)
        if found is not None:
            return found
        if not await asyncio.to_thread(self._stores.exists, name):
            existing = await asyncio.to_thread(self._stores.names)
            listed = ", ".join(repr(n) for n in existing) or "none yet"
            raise NotFoundError(
                f"catalog {name!r} does not exist: check its spelling (named catalogs: {listed}; empty for the "
                "default). A catalog is created by its first UpsertItems"
            )
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
        await self.default.close()
