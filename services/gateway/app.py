"""Composition root of the gateway: channels to the four backends and the recommender over them."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import structlog

from recsys.embedding.v1 import embedding_pb2
from recsys.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from recsys.preprocessor.v1 import preprocessor_pb2
from recsys.ranker.v1 import ranker_pb2
from recsys.retriever.v1 import retriever_pb2
from services.common.clients import open_channel
from services.gateway.backends import (
    EmbeddingClient,
    EncoderTracker,
    PreprocessorClient,
    RankerClient,
    RetrieverClient,
)
from services.gateway.config import GatewaySettings
from services.gateway.experiments import Experiments
from services.gateway.reasons import ReasonSettings
from services.gateway.recommender import Blend, Recommender, RecommenderLimits
from services.gateway.rules import Rotation
from services.gateway.servicer import GatewayServicer

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name

log = structlog.get_logger(__name__)


def backend_credentials(settings: GatewaySettings) -> grpc.ChannelCredentials | None:
    """TLS to the backends when a CA is set; with a client certificate, mutual TLS."""
    if settings.backend_tls_ca_file is None:
        return None
    cert, key = settings.backend_tls_cert_file, settings.backend_tls_key_file
    return grpc.ssl_channel_credentials(
        root_certificates=settings.backend_tls_ca_file.read_bytes(),
        private_key=key.read_bytes() if key is not None else None,
        certificate_chain=cert.read_bytes() if cert is not None else None,
    )


def _name(module: object, service: str) -> str:
    return str(module.DESCRIPTOR.services_by_name[service].full_name)  # type: ignore[attr-defined]


class GatewayApp:
    service_name = SERVICE_NAME

    def __init__(self, settings: GatewaySettings) -> None:
        bytes_limit = settings.max_message_bytes
        credentials = backend_credentials(settings)
        server_name = settings.backend_tls_server_name
        # Reads are safe to retry on UNAVAILABLE; writes are retried by the caller, who knows its intent.
        backends = [
            (settings.preprocessor_address, preprocessor_pb2, "PreprocessorService", ["CleanTexts", "BuildItemTexts"]),
            (settings.embedding_address, embedding_pb2, "EmbeddingService", ["EmbedTexts"]),
            (
                settings.retriever_address,
                retriever_pb2,
                "RetrieverService",
                [
                    "GetItems",
                    "SearchItems",
                    "RecommendItems",
                    "ListPopularItems",
                    "GetUserProfile",
                    "GetImpressions",
                    "RecordImpression",
                    "AppendUserEvents",  # idempotent per event id
                ],
            ),
            (settings.ranker_address, ranker_pb2, "RankerService", ["ScoreCandidates"]),
        ]
        self._channels = [
            open_channel(address, _name(module, service), methods, bytes_limit, credentials, server_name)
            for address, module, service, methods in backends
        ]
        self._refresh_s = settings.popular_cache_refresh_s
        self._grace_s = settings.grace_period_s
        self._refresher: asyncio.Task[None] | None = None
        preprocessor, embedding, retriever, ranker = self._channels
        self.recommender = Recommender(
            text=PreprocessorClient(preprocessor, settings.preprocessor_timeout_s, settings.query_timeout_s),
            embedding=EmbeddingClient(embedding, settings.embedding_timeout_s, settings.query_timeout_s),
            retrieval=RetrieverClient(retriever, settings.retriever_timeout_s),
            encoders=EncoderTracker(retriever, settings.retriever_timeout_s),
            ranking=RankerClient(ranker, settings.ranker_timeout_s),
            limits=RecommenderLimits(
                max_k=settings.max_k,
                max_offset=settings.max_offset,
                candidate_pool=settings.candidate_pool,
                graph_candidates=settings.graph_candidates,
                max_filter_conditions=settings.max_filter_conditions,
                max_query_chars=settings.max_query_chars,
                max_text_chars=settings.max_text_chars,
                max_items_per_upsert=settings.max_items_per_upsert,
                max_events_per_call=settings.max_events_per_call,
                history_for_ranking=settings.history_for_ranking,
                max_parallel_writes=settings.max_parallel_writes,
                popular_cache_size=settings.popular_cache_size,
                max_context_items=settings.max_context_items,
                retriever_batch=settings.retriever_batch,
                impression_queue=settings.impression_queue,
            ),
            blend=Blend(ranker_weight=settings.ranker_weight, query_weight=settings.query_weight),
            event_weights={
                "view": settings.weight_view,
                "click": settings.weight_click,
                "add_to_cart": settings.weight_add_to_cart,
                "purchase": settings.weight_purchase,
            },
            experiments=Experiments.from_file(settings.experiments_file),
            rotation=Rotation(settings.rotation_after, settings.rotation_penalty),
            reasons=ReasonSettings(
                similar_percentile=settings.reason_similar_percentile,
                graph_min_score=settings.reason_graph_min_score,
            ),
        )

    def register(self, server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(GatewayServicer(self.recommender), server)

    async def warm_up(self) -> None:
        # Connect to every backend before reporting SERVING (they may still be starting).
        for channel in self._channels:
            await channel.channel_ready()
        self._refresher = asyncio.create_task(self._refresh_popular())

    async def _refresh_popular(self) -> None:
        """Keeps the popular-items caches fresh for retriever outages (the default catalog's and those of the
        catalogs served since); a failed refresh keeps the old copy."""
        self.recommender.popular_cache("")
        while True:
            for catalog, cache in list(self.recommender.popular_caches.items()):
                try:
                    await cache.refresh()
                except Exception as error:
                    log.warning(
                        "could not refresh the popular-items cache", catalog=catalog, error=type(error).__name__
                    )
            await asyncio.sleep(self._refresh_s)

    async def close(self) -> None:
        # Pages answered before the stop are recorded before the channels close.
        await self.recommender.impressions.close(self._grace_s)
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        for channel in self._channels:
            await channel.close()


def build_app(settings: GatewaySettings) -> GatewayApp:
    return GatewayApp(settings)
