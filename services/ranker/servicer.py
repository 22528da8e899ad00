"""gRPC transport of the ranker service: converts types, nothing else."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from recsys.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from services.common.errors import InvalidArgumentError
from services.ranker.model import ScoreRequest
from services.ranker.service import RankingService


def _float32_rows(data: bytes, rows: int) -> np.ndarray:
    """Little-endian float32 bytes (a multiple of 4 * rows, checked by the caller) as a (rows, width) array."""
    return np.frombuffer(data, dtype="<f4").reshape(rows, len(data) // (4 * rows)).astype(np.float32)


def _matrix(items: Sequence[ranker_pb2.ItemVector], where: str) -> np.ndarray:
    if not items:
        return np.zeros((0, 0), dtype=np.float32)
    packed = {bool(item.vector_f32) for item in items}
    if len(packed) != 1 or any(item.vector_f32 and item.vector for item in items):
        raise InvalidArgumentError(f"{where}: send every vector as `vector` or every one as `vector_f32`, not both")
    if packed == {True}:
        sizes = {len(item.vector_f32) for item in items}
        if len(sizes) != 1 or next(iter(sizes)) % 4:
            raise InvalidArgumentError(
                f"{where} vector_f32 sizes {sorted(sizes)[:5]} bytes: each must hold the same number of float32s"
            )
        return _float32_rows(b"".join(item.vector_f32 for item in items), len(items))
    sizes = {len(item.vector) for item in items}
    if len(sizes) != 1:
        raise InvalidArgumentError(f"{where} vectors differ in length ({sorted(sizes)}): send one model's vectors")
    return np.asarray([item.vector for item in items], dtype=np.float32)


def _packed_matrix(matrix: ranker_pb2.ItemMatrix, where: str) -> tuple[list[str], np.ndarray]:
    item_ids = list(matrix.item_ids)
    data = matrix.vectors_f32
    if not item_ids:
        if data:
            raise InvalidArgumentError(f"{where}.vectors_f32 holds {len(data)} bytes but item_ids is empty")
        return item_ids, np.zeros((0, 0), dtype=np.float32)
    if not data or len(data) % (4 * len(item_ids)):
        raise InvalidArgumentError(
            f"{where}.vectors_f32 is {len(data)} bytes for {len(item_ids)} item_ids: send one row of float32s "
            "(4 bytes each) per id"
        )
    return item_ids, _float32_rows(data, len(item_ids))


def _items(task: ranker_pb2.ScoringTask, listed: str, packed: str, where: str) -> tuple[list[str], np.ndarray]:
    """A task's history or candidates, sent either as ``listed`` ItemVectors or as the ``packed`` ItemMatrix."""
    items: Sequence[ranker_pb2.ItemVector] = getattr(task, listed)
    if not task.HasField(packed):
        return [item.item_id for item in items], _matrix(items, f"{where}.{listed}")
    if items:
        raise InvalidArgumentError(f"{where}: send `{listed}` or `{packed}`, not both")
    return _packed_matrix(getattr(task, packed), f"{where}.{packed}")


class RankerServicer(ranker_pb2_grpc.RankerServiceServicer):
    def __init__(self, ranking: RankingService) -> None:
        self._ranking = ranking

    async def ScoreCandidates(
        self, request: ranker_pb2.ScoreCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> ranker_pb2.ScoreCandidatesResponse:
        requests = []
        for n, task in enumerate(request.tasks):
            history_ids, history_vectors = _items(task, "history", "history_matrix", f"tasks[{n}]")
            candidate_ids, candidate_vectors = _items(task, "candidates", "candidate_matrix", f"tasks[{n}]")
            requests.append(ScoreRequest(history_ids, history_vectors, candidate_ids, candidate_vectors))
        scores, version = await self._ranking.score(requests, request.catalog, request.model_version, _encoder(request))
        return ranker_pb2.ScoreCandidatesResponse(
            results=[ranker_pb2.TaskScores(scores=s.tolist()) for s in scores], model_version=version
        )

    async def SuggestCandidates(
        self, request: ranker_pb2.SuggestCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> ranker_pb2.SuggestCandidatesResponse:
        suggested, version = await self._ranking.suggest(
            list(request.history_item_ids), request.limit, request.catalog, request.model_version, _encoder(request)
        )
        return ranker_pb2.SuggestCandidatesResponse(
            item_ids=[item_id for item_id, _ in suggested],
            scores=[score for _, score in suggested],
            model_version=version,
        )

    async def GetModelInfo(
        self, request: ranker_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> ranker_pb2.GetModelInfoResponse:
        meta, available = await self._ranking.describe(request.catalog, request.model_version, _encoder(request))
        return ranker_pb2.GetModelInfoResponse(
            version=meta.version,
            created_at=meta.created_at,
            dataset=meta.dataset_name,
            dataset_hash=meta.dataset_hash,
            embedding_model=meta.embedding_model_id,
            metrics=meta.metrics,
            known_items=meta.n_items,
            device=self._ranking.device,
            available_versions=available,
            encoder_version=meta.encoder_version,
        )


def _encoder(
    request: ranker_pb2.ScoreCandidatesRequest | ranker_pb2.SuggestCandidatesRequest | ranker_pb2.GetModelInfoRequest,
) -> str | None:
    """The request's encoder_version: None when unset (the newest model, whatever its encoder)."""
    return str(request.encoder_version) if request.HasField("encoder_version") else None
