"""Ranker catalogs and pinned versions: each catalog's models stay its own, a pinned version scores, unknown
versions and untrained catalogs fail with a status that says what to do, the set of held models stays bounded,
concurrent first calls load once, newer checkpoints of any held catalog are picked up, and `recsys train
--catalog` writes into the catalog's folder."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from recsys.ranker.v1 import ranker_pb2 as pb
from recsys.ranker.v1 import ranker_pb2_grpc
from services.cli import main as cli
from services.common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from services.ranker.app import RankerApp
from services.ranker.checkpoints import (
    catalog_root,
    latest_checkpoint,
    list_checkpoints,
    load_scorer,
    save_checkpoint,
)
from services.ranker.config import RankerSettings
from services.ranker.model import ScoreRequest
from services.ranker.service import LoadedModel, RankingService, ScoringLimits
from services.ranker.training import TrainConfig, TrainResult, train_ranker
from tests.conftest import serving
from tests.unit.test_ranker_service import _dataset, _task, _vectors

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    dataset = _dataset()
    ids = [i.item_id for i in dataset.items]
    config = TrainConfig(dim=16, layers=1, heads=1, max_len=10, max_epochs=1, seed=3)
    result = train_ranker(dataset, (ids, _vectors(len(ids))), config, progress=False)
    # The variants below differ in the transformer's weights, so its term must count; validation may leave it out.
    return dataclasses.replace(result, fusion=dataclasses.replace(result.fusion, sequence=1.0))


def _variant(result: TrainResult, name: str, seed: int) -> TrainResult:
    """Another model (weights moved by seeded noise) that says which data set it stands for."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        key: value + 0.5 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for key, value in result.state_dict.items()
    }
    return dataclasses.replace(result, state_dict=state, dataset_name=name)


@dataclasses.dataclass(frozen=True)
class Layout:
    root: Path
    default: Path  # the default catalog's only version
    articles_old: Path
    articles_new: Path


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory, trained: TrainResult) -> Layout:
    root = tmp_path_factory.mktemp("catalog-checkpoints")
    default = save_checkpoint(root, trained, embedding_model_id="test-model", now=T0)
    articles = catalog_root(root, "articles")
    old = save_checkpoint(articles, _variant(trained, "articles-v1", 1), embedding_model_id="test-model", now=T0)
    new = save_checkpoint(
        articles, _variant(trained, "articles-v2", 2), embedding_model_id="test-model", now=T0 + timedelta(hours=1)
    )
    return Layout(root, default, old, new)


@pytest.fixture(scope="module")
async def stub(layout: Layout) -> AsyncIterator[ranker_pb2_grpc.RankerServiceStub]:
    settings = RankerSettings(checkpoint_dir=layout.root, device="cpu", reload_interval_s=0.2)
    async with serving(RankerApp(settings)) as channel:
        yield ranker_pb2_grpc.RankerServiceStub(channel)


def _request(catalog: str = "", model_version: str = "") -> pb.ScoreCandidatesRequest:
    return pb.ScoreCandidatesRequest(tasks=[_task(3, 6)], catalog=catalog, model_version=model_version)


def _expected(version: Path, request: pb.ScoreCandidatesRequest) -> list[float]:
    """What the checkpoint in ``version`` scores for the request's one task, loaded directly."""
    scorer, _ = load_scorer(version)
    task = request.tasks[0]
    [scores] = scorer.score_many(
        [
            ScoreRequest(
                history_item_ids=[h.item_id for h in task.history],
                history_vectors=np.asarray([h.vector for h in task.history], dtype=np.float32),
                candidate_item_ids=[c.item_id for c in task.candidates],
                candidate_vectors=np.asarray([c.vector for c in task.candidates], dtype=np.float32),
            )
        ]
    )
    return [float(s) for s in np.asarray(scores, dtype=np.float32)]


async def _status(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def test_layout_keeps_the_default_catalog_where_it_was(layout: Layout) -> None:
    assert layout.default.parent == layout.root
    assert layout.articles_new.parent == layout.root / "catalogs" / "articles"
    # The catalogs folder is not a version of the default catalog.
    assert latest_checkpoint(layout.root) == layout.default
    assert list_checkpoints(catalog_root(layout.root, "articles")) == [layout.articles_new, layout.articles_old]


async def test_each_catalog_scores_with_its_own_model(stub: ranker_pb2_grpc.RankerServiceStub, layout: Layout) -> None:
    default = await stub.ScoreCandidates(_request())
    articles = await stub.ScoreCandidates(_request("articles"))
    assert default.model_version == layout.default.name
    assert articles.model_version == layout.articles_new.name
    np.testing.assert_allclose(default.results[0].scores, _expected(layout.default, _request()), rtol=1e-5)
    np.testing.assert_allclose(articles.results[0].scores, _expected(layout.articles_new, _request()), rtol=1e-5)
    assert not np.allclose(default.results[0].scores, articles.results[0].scores)


async def test_a_catalog_without_a_model_never_borrows_another(
    stub: ranker_pb2_grpc.RankerServiceStub,
) -> None:
    error = await _status(stub.ScoreCandidates(_request("videos")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "no ranker model for catalog videos: run `recsys train --catalog videos`"
    error = await _status(stub.ScoreCandidates(_request("videos", "anything")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_pinned_older_version_scores_while_the_newest_is_the_default(
    stub: ranker_pb2_grpc.RankerServiceStub, layout: Layout
) -> None:
    pinned = await stub.ScoreCandidates(_request("articles", layout.articles_old.name))
    newest = await stub.ScoreCandidates(_request("articles"))
    assert pinned.model_version == layout.articles_old.name
    assert newest.model_version == layout.articles_new.name
    np.testing.assert_allclose(pinned.results[0].scores, _expected(layout.articles_old, _request()), rtol=1e-5)
    # A version of another catalog is not a version of this one.
    error = await _status(stub.ScoreCandidates(_request("", layout.articles_old.name)))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_an_unknown_version_names_the_available_ones(
    stub: ranker_pb2_grpc.RankerServiceStub, layout: Layout
) -> None:
    error = await _status(stub.ScoreCandidates(_request("articles", "20990101T000000Z-00000000")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    details = error.details() or ""
    assert "20990101T000000Z-00000000" in details and "catalog articles" in details
    assert f"{layout.articles_new.name}, {layout.articles_old.name}" in details
    error = await _status(stub.GetModelInfo(pb.GetModelInfoRequest(catalog="articles", model_version="../..")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("name", ["Articles", "-articles", "_x", "a" * 65, "art icles", "../x", "a/b", "é"])
async def test_malformed_catalog_names_are_rejected_with_the_rule(
    stub: ranker_pb2_grpc.RankerServiceStub, name: str
) -> None:
    for call in (stub.ScoreCandidates(_request(name)), stub.GetModelInfo(pb.GetModelInfoRequest(catalog=name))):
        error = await _status(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit" in (error.details() or "")


@pytest.mark.parametrize("name", ["a", "0", "a" * 64, "news-2026_v1"])
def test_well_formed_catalog_names_have_their_own_folder(tmp_path: Path, name: str) -> None:
    assert catalog_root(tmp_path, name) == tmp_path / "catalogs" / name
    assert catalog_root(tmp_path, "") == tmp_path


async def test_model_info_lists_the_versions_newest_first(
    stub: ranker_pb2_grpc.RankerServiceStub, layout: Layout
) -> None:
    info = await stub.GetModelInfo(pb.GetModelInfoRequest(catalog="articles"))
    assert info.version == layout.articles_new.name
    assert info.dataset == "articles-v2"
    assert list(info.available_versions) == [layout.articles_new.name, layout.articles_old.name]
    pinned = await stub.GetModelInfo(pb.GetModelInfoRequest(catalog="articles", model_version=layout.articles_old.name))
    assert (pinned.version, pinned.dataset) == (layout.articles_old.name, "articles-v1")
    default = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (default.version, default.dataset) == (layout.default.name, "tiny")
    assert list(default.available_versions) == [layout.default.name]
    error = await _status(stub.GetModelInfo(pb.GetModelInfoRequest(catalog="videos")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


# --- the domain service: bound, single load, hot reload --------------------------------------------------------


class CountingService(RankingService):
    """Counts checkpoint loads by folder."""

    def __init__(self, root: Path, max_loaded_models: int, reload_interval_s: float = 60.0) -> None:
        super().__init__(root, "cpu", reload_interval_s, ScoringLimits(8, 50, 50), max_loaded_models=max_loaded_models)
        self.loads: list[str] = []

    def _load(self, path: Path) -> LoadedModel:
        self.loads.append(path.name)
        return super()._load(path)


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory, trained: TrainResult) -> Path:
    """The default catalog and catalogs c0..c3, one version each."""
    root = tmp_path_factory.mktemp("many-catalogs")
    save_checkpoint(root, trained, embedding_model_id="test-model", now=T0)
    for n in range(4):
        save_checkpoint(catalog_root(root, f"c{n}"), _variant(trained, f"c{n}", 10 + n), embedding_model_id="m", now=T0)
    return root


async def test_held_models_stay_within_the_bound_and_the_default_stays(many: Path) -> None:
    service = CountingService(many, max_loaded_models=3)
    try:
        await service.warm_up()
        default_key = ("", latest_checkpoint(many).name)  # type: ignore[union-attr]
        for catalog in ("c0", "c1", "c2", "c3", "c0"):
            model = await service.model(catalog)
            assert model.metadata.dataset_name == catalog
            assert len(service.loaded_keys()) <= 3
            assert default_key in service.loaded_keys()
        assert [c for c, _ in service.loaded_keys()] == ["", "c3", "c0"]
        # c1 was the least recently used when c3 came; c0 came back with a second load.
        assert len(service.loads) == 1 + 5
        await service.model("c3")  # held: no load
        assert len(service.loads) == 6
        scores, version = await service.score([_score_request()], "c3")
        assert version == latest_checkpoint(catalog_root(many, "c3")).name  # type: ignore[union-attr]
        assert len(scores[0]) == 4
    finally:
        await service.close()


def _score_request() -> ScoreRequest:
    vectors = _vectors(6)
    return ScoreRequest(
        history_item_ids=["i1", "i2"],
        history_vectors=vectors[:2],
        candidate_item_ids=["x0", "x1", "x2", "x3"],
        candidate_vectors=vectors[2:],
    )


async def test_concurrent_first_calls_load_once(many: Path) -> None:
    service = CountingService(many, max_loaded_models=4)
    try:
        results = await asyncio.gather(*(service.score([_score_request()], "c2") for _ in range(8)))
        assert len({version for _, version in results}) == 1
        assert service.loads == [results[0][1]]
    finally:
        await service.close()


async def test_domain_errors(many: Path) -> None:
    service = CountingService(many, max_loaded_models=2)
    try:
        with pytest.raises(FailedPreconditionError, match="run `recsys train --catalog nope`"):
            await service.model("nope")
        with pytest.raises(NotFoundError, match="available"):
            await service.model("c1", "missing")
        with pytest.raises(InvalidArgumentError):
            await service.model("Bad")
        assert service.loads == []
    finally:
        await service.close()


async def test_a_broken_checkpoint_says_which(tmp_path: Path, trained: TrainResult) -> None:
    broken = save_checkpoint(catalog_root(tmp_path, "shop"), trained, embedding_model_id="m", now=T0)
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    service = CountingService(tmp_path, max_loaded_models=2)
    try:
        with pytest.raises(FailedPreconditionError, match=f"ranker model {broken.name} of catalog shop could not"):
            await service.model("shop")
    finally:
        await service.close()


async def test_a_newer_checkpoint_of_a_held_catalog_is_picked_up(tmp_path: Path, trained: TrainResult) -> None:
    save_checkpoint(tmp_path, trained, embedding_model_id="m", now=T0)
    news = catalog_root(tmp_path, "news")
    first = save_checkpoint(news, _variant(trained, "news-1", 21), embedding_model_id="m", now=T0)
    service = CountingService(tmp_path, max_loaded_models=4, reload_interval_s=0.1)
    try:
        await service.warm_up()
        pinned = await service.model("news", first.name)
        assert (await service.model("news")) is pinned
        newer = save_checkpoint(
            news, _variant(trained, "news-2", 22), embedding_model_id="m", now=T0 + timedelta(days=1)
        )
        for _ in range(100):
            # Calls keep succeeding while the watcher swaps.
            _, version = await service.score([_score_request()], "news")
            if version == newer.name:
                break
            await asyncio.sleep(0.05)
        assert version == newer.name
        # The pinned older version is still held and still scores.
        _, version = await service.score([_score_request()], "news", first.name)
        assert version == first.name
        assert service.loads.count(first.name) == 1
    finally:
        await service.close()


# --- recsys train --catalog ------------------------------------------------------------------------------------


def _write_plain(folder: Path) -> None:
    dataset = _dataset()
    folder.mkdir()
    (folder / "items.jsonl").write_text(
        "".join(json.dumps({"item_id": i.item_id, "title": i.title}) + "\n" for i in dataset.items), encoding="utf-8"
    )
    rows = "".join(f"{x.user_id},{x.item_id},{int(x.timestamp)}\n" for x in dataset.interactions)
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp\n" + rows, encoding="utf-8")


def test_train_writes_into_the_catalog_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The encoder is not what this tests: random vectors stand in for the item embeddings.
    monkeypatch.setattr(
        "services.cli.training.embed_items", lambda items, cache_dir: (_vectors(len(items)), "test-model")
    )
    data, state = tmp_path / "data", tmp_path / "var"
    _write_plain(data)
    common = ["train", "--data", str(data), "--state-dir", str(state), "--epochs", "1", "--no-adapt-encoder"]
    cli.main([*common, "--catalog", "articles"])
    written = Path(json.loads(capsys.readouterr().out)["checkpoint"])
    assert written.parent == state / "checkpoints" / "catalogs" / "articles"
    assert latest_checkpoint(state / "checkpoints") is None  # the default catalog got nothing
    cli.main(common)
    written = Path(json.loads(capsys.readouterr().out)["checkpoint"])
    assert written.parent == state / "checkpoints"


def test_train_rejects_a_malformed_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--catalog", "Not Valid"])
    assert "invalid catalog name 'Not Valid'" in capsys.readouterr().err
