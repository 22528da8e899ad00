"""The ranker service over gRPC: scores from the newest checkpoint, hot reload, model info, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest

from recsys.ranker.v1 import ranker_pb2 as pb
from recsys.ranker.v1 import ranker_pb2_grpc
from services.datasets.loaders import CatalogItem, Dataset, Interaction
from services.ranker.app import RankerApp
from services.ranker.checkpoints import save_checkpoint
from services.ranker.config import RankerSettings
from services.ranker.training import TrainConfig, TrainResult, train_ranker
from tests.conftest import serving

DIM = 384


def _dataset() -> Dataset:
    items = tuple(CatalogItem(item_id=f"i{n}", title=f"item {n}") for n in range(30))
    interactions = tuple(
        Interaction(user_id=f"u{u}", item_id=f"i{(u + t) % 30}", timestamp=float(t))
        for u in range(40)
        for t in range(5)
    )
    return Dataset(name="tiny", items=items, interactions=interactions)


def _vectors(n: int) -> np.ndarray:
    v = np.random.default_rng(0).normal(size=(n, DIM)).astype(np.float32)
    unit: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return unit


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    dataset = _dataset()
    ids = [i.item_id for i in dataset.items]
    config = TrainConfig(dim=16, layers=1, heads=1, max_len=10, max_epochs=1, seed=3)
    return train_ranker(dataset, (ids, _vectors(len(ids))), config, progress=False)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory, trained: TrainResult) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    save_checkpoint(root, trained, embedding_model_id="test-model", now=datetime(2026, 1, 1, tzinfo=UTC))
    return root


@pytest.fixture(scope="module")
async def stub(checkpoint_dir: Path) -> AsyncIterator[ranker_pb2_grpc.RankerServiceStub]:
    settings = RankerSettings(checkpoint_dir=checkpoint_dir, device="cpu", reload_interval_s=0.2, max_candidates=50)
    async with serving(RankerApp(settings)) as channel:
        yield ranker_pb2_grpc.RankerServiceStub(channel)


def _task(history: int, candidates: int, dim: int = DIM) -> pb.ScoringTask:
    vectors = _vectors(history + candidates)[:, :dim]
    return pb.ScoringTask(
        user_id="u1",
        history=[pb.ItemVector(item_id=f"i{n}", vector=vectors[n].tolist()) for n in range(history)],
        candidates=[pb.ItemVector(item_id=f"new{n}", vector=vectors[history + n].tolist()) for n in range(candidates)],
    )


async def test_scores_every_candidate(stub: ranker_pb2_grpc.RankerServiceStub) -> None:
    response = await stub.ScoreCandidates(pb.ScoreCandidatesRequest(tasks=[_task(3, 5), _task(0, 2)]))
    assert [len(r.scores) for r in response.results] == [5, 2]
    assert len(set(response.results[0].scores)) > 1
    assert response.model_version.startswith("20260101T000000Z-")


async def test_model_info(stub: ranker_pb2_grpc.RankerServiceStub) -> None:
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.dataset, info.embedding_model, info.known_items, info.device) == ("tiny", "test-model", 30, "cpu")
    assert "val_ndcg@10" in info.metrics
    # No catalog and no version: the default catalog's newest, as before catalogs existed.
    assert list(info.available_versions) == [info.version]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.ScoreCandidatesRequest(), "tasks is empty"),
        (pb.ScoreCandidatesRequest(tasks=[_task(2, 0)]), "has no candidates"),
        (pb.ScoreCandidatesRequest(tasks=[_task(2, 51)]), "the limit is 50"),
        (pb.ScoreCandidatesRequest(tasks=[_task(2, 3, dim=10)]), "the model expects 384"),
    ],
)
async def test_bad_input(
    stub: ranker_pb2_grpc.RankerServiceStub, request_: pb.ScoreCandidatesRequest, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ScoreCandidates(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


async def test_suggests_what_the_item_graph_links_to_the_history(
    stub: ranker_pb2_grpc.RankerServiceStub, trained: TrainResult
) -> None:
    request = pb.SuggestCandidatesRequest(history_item_ids=["i3", "i4", "unknown"], limit=5)
    response = await stub.SuggestCandidates(request)
    assert response.model_version.startswith("20260101T000000Z-")
    assert list(response.item_ids) == [i for i, _ in trained.scorer().suggest(["i3", "i4", "unknown"], 5)]
    assert response.item_ids and {"i3", "i4"}.isdisjoint(response.item_ids)
    assert list(response.scores) == sorted(response.scores, reverse=True)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.SuggestCandidatesRequest(limit=5), "history_item_ids is empty"),
        (pb.SuggestCandidatesRequest(history_item_ids=["i1"], limit=0), "limit is 0"),
        (pb.SuggestCandidatesRequest(history_item_ids=["i1"], limit=51), "limit is 51"),
    ],
)
async def test_bad_suggest_requests(
    stub: ranker_pb2_grpc.RankerServiceStub, request_: pb.SuggestCandidatesRequest, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SuggestCandidates(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


def _packed(task: pb.ScoringTask) -> pb.ScoringTask:
    def pack(items: Sequence[pb.ItemVector]) -> list[pb.ItemVector]:
        return [pb.ItemVector(item_id=i.item_id, vector_f32=np.asarray(i.vector, dtype="<f4").tobytes()) for i in items]

    return pb.ScoringTask(user_id=task.user_id, history=pack(task.history), candidates=pack(task.candidates))


async def test_packed_vectors_score_like_repeated_floats(stub: ranker_pb2_grpc.RankerServiceStub) -> None:
    task = _task(3, 5)
    plain = await stub.ScoreCandidates(pb.ScoreCandidatesRequest(tasks=[task]))
    packed = await stub.ScoreCandidates(pb.ScoreCandidatesRequest(tasks=[_packed(task)]))
    assert list(packed.results[0].scores) == list(plain.results[0].scores)


def _matrix_task(task: pb.ScoringTask) -> pb.ScoringTask:
    def matrix(items: Sequence[pb.ItemVector]) -> pb.ItemMatrix:
        vectors = np.asarray([list(i.vector) for i in items], dtype="<f4").tobytes() if items else b""
        return pb.ItemMatrix(item_ids=[i.item_id for i in items], vectors_f32=vectors)

    return pb.ScoringTask(
        user_id=task.user_id, history_matrix=matrix(task.history), candidate_matrix=matrix(task.candidates)
    )


async def test_item_matrices_score_like_item_lists(stub: ranker_pb2_grpc.RankerServiceStub) -> None:
    for history in (3, 0):
        task = _task(history, 5)
        plain = await stub.ScoreCandidates(pb.ScoreCandidatesRequest(tasks=[task]))
        packed = await stub.ScoreCandidates(pb.ScoreCandidatesRequest(tasks=[_matrix_task(task)]))
        assert list(packed.results[0].scores) == list(plain.results[0].scores)


async def test_bad_item_matrices_are_invalid_argument(stub: ranker_pb2_grpc.RankerServiceStub) -> None:
    task = _task(2, 3)
    both = _matrix_task(task)
    both.candidates.extend(task.candidates)
    short = _matrix_task(task)
    short.candidate_matrix.vectors_f32 = short.candidate_matrix.vectors_f32[:-4]
    no_ids = _matrix_task(task)
    del no_ids.history_matrix.item_ids[:]
    empty = _matrix_task(task)
    empty.candidate_matrix.CopyFrom(pb.ItemMatrix())
    for bad, message in (
        (both, "not both"),
        (short, "one row of float32s"),
        (no_ids, "item_ids is empty"),
        (empty, "has no candidates"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ScoreCandidates(pb.ScoreCandidatesRequest(tasks=[bad]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (caught.value.details() or "")


async def test_bad_packed_vectors_are_invalid_argument(stub: ranker_pb2_grpc.RankerServiceStub) -> None:
    task = _task(2, 2)
    mixed = _packed(task)
    mixed.candidates[0].vector.extend(task.candidates[0].vector)  # both encodings on one item
    odd = _packed(task)
    odd.candidates[1].vector_f32 = odd.candidates[1].vector_f32[:-2]
    half = _packed(task)
    half.candidates[1].CopyFrom(task.candidates[1])  # one list with both encodings
    for bad, message in ((mixed, "not both"), (odd, "float32s"), (half, "not both")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ScoreCandidates(pb.ScoreCandidatesRequest(tasks=[bad]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (caught.value.details() or "")


async def test_nan_vector_is_rejected(stub: ranker_pb2_grpc.RankerServiceStub) -> None:
    task = _task(1, 2)
    task.candidates[0].vector[0] = float("nan")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ScoreCandidates(pb.ScoreCandidatesRequest(tasks=[task]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_newer_checkpoint_is_picked_up(
    stub: ranker_pb2_grpc.RankerServiceStub, checkpoint_dir: Path, trained: TrainResult
) -> None:
    newer = save_checkpoint(
        checkpoint_dir,
        trained,
        embedding_model_id="test-model",
        now=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=1),
    )
    for _ in range(50):
        response = await stub.ScoreCandidates(pb.ScoreCandidatesRequest(tasks=[_task(1, 2)]))
        if response.model_version == newer.name:
            break
        await asyncio.sleep(0.1)
    assert response.model_version == newer.name


async def test_each_encoder_is_scored_by_the_newest_model_trained_on_it(tmp_path: Path, trained: TrainResult) -> None:
    older = save_checkpoint(tmp_path, trained, embedding_model_id="m", now=datetime(2026, 1, 1, tzinfo=UTC))
    adapted = save_checkpoint(
        tmp_path, trained, embedding_model_id="m@v2", encoder_version="v2", now=datetime(2026, 1, 2, tzinfo=UTC)
    )
    settings = RankerSettings(checkpoint_dir=tmp_path, device="cpu", reload_interval_s=0.2, max_candidates=50)
    async with serving(RankerApp(settings)) as channel:
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        newest = await stub.ScoreCandidates(pb.ScoreCandidatesRequest(tasks=[_task(3, 5)]))
        assert newest.model_version == adapted.name  # unset: the newest, whatever its encoder
        for encoder, expected in (("", older.name), ("v2", adapted.name)):
            request = pb.ScoreCandidatesRequest(tasks=[_task(3, 5)], encoder_version=encoder)
            assert (await stub.ScoreCandidates(request)).model_version == expected
            suggest = pb.SuggestCandidatesRequest(history_item_ids=["i1", "i2"], limit=3, encoder_version=encoder)
            assert (await stub.SuggestCandidates(suggest)).model_version == expected
            info = await stub.GetModelInfo(pb.GetModelInfoRequest(encoder_version=encoder))
            assert (info.version, info.encoder_version) == (expected, encoder)
        pinned = pb.ScoreCandidatesRequest(tasks=[_task(3, 5)], model_version=older.name, encoder_version="v2")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ScoreCandidates(pinned)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "trained on the base encoder's vectors, not encoder v2's" in (refused.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as none:
            await stub.ScoreCandidates(pb.ScoreCandidatesRequest(tasks=[_task(3, 5)], encoder_version="v3"))
        assert none.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no ranker model of the default catalog was trained on encoder v3" in (none.value.details() or "")
