"""Composition root of the gateway: channels to the four backends and the recommender over them."""

from __future__ import annotations

import grpc

from recsys.embedding.v1 import embedding_pb2
from recsys.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from recsys.preprocessor.v1 import preprocessor_pb2
from recsys.ranker.v1 import ranker_pb2
from recsys.retriever.v1 import retriever_pb2
from services.common.clients import open_channel
from services.gateway.backends import EmbeddingClient, PreprocessorClient, RankerClient, RetrieverClient
from services.gateway.config import GatewaySettings
from services.gateway.recommender import Blend, Recommender, RecommenderLimits
from services.gateway.servicer import GatewayServicer

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


def _name(module: object, service: str) -> str:
    return str(module.DESCRIPTOR.services_by_name[service].full_name)  # type: ignore[attr-defined]


class GatewayApp:
    service_name = SERVICE_NAME

    def __init__(self, settings: GatewaySettings) -> None:
        bytes_limit = settings.max_message_bytes
        # Reads are safe to retry on UNAVAILABLE; writes are retried by the caller, who knows its intent.
        self._channels = [
            open_channel(
                settings.preprocessor_address,
                _name(preprocessor_pb2, "PreprocessorService"),
                ["CleanTexts", "BuildItemTexts"],
                bytes_limit,
            ),
            open_channel(
                settings.embedding_address, _name(embedding_pb2, "EmbeddingService"), ["EmbedTexts"], bytes_limit
            ),
            open_channel(
                settings.retriever_address,
                _name(retriever_pb2, "RetrieverService"),
                ["GetItems", "SearchItems", "RecommendItems", "ListPopularItems", "GetUserProfile"],
                bytes_limit,
            ),
            open_channel(settings.ranker_address, _name(ranker_pb2, "RankerService"), ["ScoreCandidates"], bytes_limit),
        ]
        preprocessor, embedding, retriever, ranker = self._channels
        self.recommender = Recommender(
            text=PreprocessorClient(preprocessor, settings.preprocessor_timeout_s),
            embedding=EmbeddingClient(embedding, settings.embedding_timeout_s),
            retrieval=RetrieverClient(retriever, settings.retriever_timeout_s),
            ranking=RankerClient(ranker, settings.ranker_timeout_s),
            limits=RecommenderLimits(
                max_k=settings.max_k,
                max_offset=settings.max_offset,
                candidate_pool=settings.candidate_pool,
                max_filter_conditions=settings.max_filter_conditions,
                max_query_chars=settings.max_query_chars,
                max_text_chars=settings.max_text_chars,
                max_items_per_upsert=settings.max_items_per_upsert,
                max_events_per_call=settings.max_events_per_call,
                history_for_ranking=settings.history_for_ranking,
                max_parallel_writes=settings.max_parallel_writes,
            ),
            blend=Blend(ranker_weight=settings.ranker_weight, query_weight=settings.query_weight),
            event_weights={
                "view": settings.weight_view,
                "click": settings.weight_click,
                "add_to_cart": settings.weight_add_to_cart,
                "purchase": settings.weight_purchase,
            },
        )

    def register(self, server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(GatewayServicer(self.recommender), server)

    async def warm_up(self) -> None:
        # Connect to every backend before reporting SERVING (they may still be starting).
        for channel in self._channels:
            await channel.channel_ready()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def build_app(settings: GatewaySettings) -> GatewayApp:
    return GatewayApp(settings)
