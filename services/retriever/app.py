"""Composition root of the retriever: the embedded engine by default, a Qdrant server when a URL is set."""

from __future__ import annotations

import grpc

from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.common.metrics import retriever_metrics
from services.retriever.client_store import ClientVectorStore
from services.retriever.config import RetrieverSettings
from services.retriever.edge_store import EdgeVectorStore
from services.retriever.service import Retrieval
from services.retriever.servicer import RetrieverServicer
from services.retriever.store import VectorStore

SERVICE_NAME = retriever_pb2.DESCRIPTOR.services_by_name["RetrieverService"].full_name


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
    return EdgeVectorStore(
        settings.data_dir,
        settings.dimension,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construct=settings.hnsw_ef_construct,
        max_history=settings.max_history,
        half_life_events=settings.half_life_events,
        sync_writes=settings.sync_writes,
    )


class RetrieverApp:
    service_name = SERVICE_NAME

    def __init__(self, settings: RetrieverSettings, store: VectorStore) -> None:
        self.retrieval = Retrieval(
            store,
            settings.max_limit,
            settings.max_batch,
            settings.index_min_unindexed,
            settings.workers,
            retriever_metrics(),
            max_exclude_ids=settings.max_exclude_ids,
            max_filter_values=settings.max_filter_values,
        )

    def register(self, server: grpc.aio.Server) -> None:
        retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(RetrieverServicer(self.retrieval), server)

    async def warm_up(self) -> None:
        await self.retrieval.info()

    async def close(self) -> None:
        await self.retrieval.close()


def build_app(settings: RetrieverSettings) -> RetrieverApp:
    return RetrieverApp(settings, open_store(settings))
