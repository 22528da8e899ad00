"""Composition root of the ranker service."""

from __future__ import annotations

import grpc

from recsys.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from services.common.metrics import ranker_metrics
from services.embedding.encoder import resolve_device
from services.ranker.config import RankerSettings
from services.ranker.service import RankingService, ScoringLimits
from services.ranker.servicer import RankerServicer

SERVICE_NAME = ranker_pb2.DESCRIPTOR.services_by_name["RankerService"].full_name


class RankerApp:
    service_name = SERVICE_NAME

    def __init__(self, settings: RankerSettings) -> None:
        self.ranking = RankingService(
            settings.checkpoint_dir,
            resolve_device(settings.device),
            settings.reload_interval_s,
            ScoringLimits(settings.max_tasks_per_request, settings.max_candidates, settings.max_history),
            ranker_metrics(),
            max_loaded_models=settings.max_loaded_models,
        )

    def register(self, server: grpc.aio.Server) -> None:
        ranker_pb2_grpc.add_RankerServiceServicer_to_server(RankerServicer(self.ranking), server)

    async def warm_up(self) -> None:
        await self.ranking.warm_up()

    async def close(self) -> None:
        await self.ranking.close()


def build_app(settings: RankerSettings) -> RankerApp:
    return RankerApp(settings)
