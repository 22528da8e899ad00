"""Composition root of the retriever: the embedded engine by default, a Qdrant server when a URL is set; the
default catalog's store is opened here, named catalogs lazily through the registry."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import structlog

from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.common.metrics import retriever_metrics
from services.retriever.catalogs import (
    CatalogRegistry,
    CatalogStores,
    CollectionCatalogs,
    FolderCatalogs,
    TimingsOnly,
)
from services.retriever.client_store import ClientVectorStore
from services.retriever.config import RetrieverSettings
from services.retriever.edge_store import EdgeVectorStore
from services.retriever.service import Retrieval
from services.retriever.servicer import RetrieverServicer
from services.retriever.store import VectorStore

SERVICE_NAME = retriever_pb2.DESCRIPTOR.services_by_name["RetrieverService"].full_name
log = structlog.get_logger(__name__)


def open_store(settings: RetrieverSettings) -> VectorStore:
    if settings.qdrant_url:
        return ClientVectorStore.from_url(
            settings.qdrant_url,
            settings.qdrant_api_key or None,
            dimension=settings.dimension,
            shard_number=settings.qdrant_shards,
            replication_factor=settings.qdrant_replication_factor,
            max_history=settings.max_history,
            half_life_events=settings.half_life_events,
        )
    return open_edge_store(settings, settings.data_dir)


def open_edge_store(settings: RetrieverSettings, folder: Path) -> EdgeVectorStore:
    return EdgeVectorStore(
        folder,
        settings.dimension,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construct=settings.hnsw_ef_construct,
        max_history=settings.max_history,
        half_life_events=settings.half_life_events,
        sync_writes=settings.sync_writes,
        rebuild_unindexed=settings.index_min_unindexed,
        item_cache_items=settings.item_cache_items,
    )


def catalog_stores(settings: RetrieverSettings, default: VectorStore) -> CatalogStores:
    """Named catalogs beside the default: collections on its client, or folders under `data_dir/catalogs`."""
    if isinstance(default, ClientVectorStore):
        return CollectionCatalogs(default.client, default.with_prefix)
    return FolderCatalogs(settings.data_dir / "catalogs", lambda folder: open_edge_store(settings, folder))


class RetrieverApp:
    service_name = SERVICE_NAME

    def __init__(self, settings: RetrieverSettings, store: VectorStore) -> None:
        metrics = retriever_metrics()
        self._index_idle_s = settings.index_idle_s
        self._idle_watcher: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="engine")

        def retrieval(catalog_store: VectorStore, default: bool = False) -> Retrieval:
            return Retrieval(
                catalog_store,
                settings.max_limit,
                settings.max_batch,
                settings.index_min_unindexed,
                settings.workers,
                metrics if default else TimingsOnly(metrics),
                max_exclude_ids=settings.max_exclude_ids,
                max_filter_values=settings.max_filter_values,
                executor=self._executor,
                index_idle_s=settings.index_idle_s,
                index_idle_min_unindexed=settings.index_idle_min_unindexed,
            )

        self.retrieval = retrieval(store, default=True)
        self.catalogs = CatalogRegistry(
            self.retrieval, catalog_stores(settings, store), retrieval, max_catalogs=settings.max_catalogs
        )

    def register(self, server: grpc.aio.Server) -> None:
        retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(RetrieverServicer(self.catalogs), server)

    async def warm_up(self) -> None:
        await self.retrieval.check_index()
        if self._index_idle_s:
            self._idle_watcher = asyncio.create_task(self._build_indexes_when_idle())

    async def _build_indexes_when_idle(self) -> None:
        while True:
            await asyncio.sleep(min(10.0, self._index_idle_s / 2))
            for catalog, retrieval in list(self.catalogs.opened.items()):
                try:
                    await retrieval.build_index_if_idle()
                except Exception:
                    log.exception("could not start an index build after writes stopped", catalog=catalog or "(default)")

    async def close(self) -> None:
        if self._idle_watcher is not None:
            self._idle_watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle_watcher
        await self.catalogs.close()
        self._executor.shutdown(wait=True)


def build_app(settings: RetrieverSettings) -> RetrieverApp:
    return RetrieverApp(settings, open_store(settings))
