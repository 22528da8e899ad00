"""Rolling a catalog out to an adapted encoder through the five running services: `recsys reindex` embeds the
catalog again while Recommend keeps answering, switches retriever, queries and ranker together, and rolls back.

On a catalog of its own, so the other tests see the default catalog's encoder unchanged. The adapted encoder and
both ranker models come from the real `recsys train` path; only its choice of whether the adapted encoder pays
is forced (on 150 items it is within noise), so that there is an encoder to roll out to."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from recsys_client import CatalogItem, RecsysClient
from services.cli import training as cli_training
from services.cli.ingest import ingest
from services.cli.training import train_and_publish
from services.datasets.loaders import Dataset, load_dataset
from services.ranker.checkpoints import METADATA_FILE, CheckpointMetadata, list_checkpoints
from services.ranker.encoder_tuning import TuningConfig
from services.ranker.scoring import Gain
from services.ranker.training import TrainConfig
from tests.conftest import SCIENTIFIC
from tests.integration.conftest import RunningSuite

CATALOG = "rollout"
ITEMS = 150
TRAIN = TrainConfig(dim=16, layers=1, heads=1, max_len=10, max_epochs=2, batch_size=64, seed=0, tune_users=100)
TUNING = TuningConfig(trained_layers=1, max_tokens=256, batch_size=16, max_epochs=1, pairs_per_epoch=64, eval_users=50)


@dataclass
class Models:
    dataset: Dataset
    base: str  # checkpoint trained on the base encoder's vectors
    adapted: str  # checkpoint trained on the adapted encoder's
    encoder: str  # the adapted encoder's version


@pytest.fixture(scope="module")
def models(suite: RunningSuite) -> Models:
    dataset = load_dataset(SCIENTIFIC, limit_items=ITEMS)
    with RecsysClient(suite.address("gateway")) as client:
        ingest(client, dataset, catalog=CATALOG)
    checkpoints, cache = suite.state_dir / "checkpoints", suite.state_dir / "rollout-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli_training, "paired_gain", lambda model, simpler, seed: Gain(0.01, 0.005, 0.02, 10))
        adapted, _ = train_and_publish(dataset, checkpoints, cache, TRAIN, CATALOG, TUNING)
    assert adapted is not None
    encoder = CheckpointMetadata.from_file(adapted / METADATA_FILE).encoder_version
    # The training published the frozen model beside the adapted one: the base encoder's, served until the switch.
    base = next(
        p
        for p in list_checkpoints(adapted.parent)
        if not CheckpointMetadata.from_file(p / METADATA_FILE).encoder_version
    )
    assert encoder
    return Models(dataset, base.name, adapted.name, encoder)


@dataclass
class Load:
    """Recommend calls in a loop while a reindex runs: every answer, and every error."""

    answers: list[pb.RecommendResponse] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def _recommend_until_stopped(stub: gateway_pb2_grpc.GatewayServiceStub, users: list[str], load: Load) -> None:
    calls = 0
    while not load.stop.is_set():
        user = users[calls % len(users)]
        query = "digital multimeter" if calls % 3 == 0 else ""
        calls += 1
        try:
            load.answers.append(
                stub.Recommend(pb.RecommendRequest(user_id=user, k=5, query=query, catalog=CATALOG), timeout=30)
            )
        except grpc.RpcError as error:
            load.errors.append(f"{error.code().name}: {error.details()}")


@pytest.fixture
def load(suite: RunningSuite, models: Models) -> Iterator[Load]:
    users = sorted(models.dataset.sequences())[:20]
    running = Load()
    with grpc.insecure_channel(suite.address("gateway")) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        thread = threading.Thread(target=_recommend_until_stopped, args=(stub, users, running), daemon=True)
        thread.start()
        yield running
        running.stop.set()
        thread.join(timeout=60)


def _reindex(suite: RunningSuite, *args: str) -> subprocess.CompletedProcess[str]:
    addresses = [f"--{name}={suite.address(name)}" for name in ("retriever", "embedding", "ranker", "preprocessor")]
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "reindex", "--catalog", CATALOG, *addresses, *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _encoders(retriever: retriever_pb2_grpc.RetrieverServiceStub) -> retriever_pb2.EncoderState:
    info = retriever.GetCollectionInfo(retriever_pb2.GetCollectionInfoRequest(catalog=CATALOG), timeout=30)
    return info.encoders


def _upsert_during(suite: RunningSuite, done: threading.Event, written: list[str]) -> None:
    """Items written through the gateway while the reindex runs; they must reach the served copy either way."""
    with RecsysClient(suite.address("gateway")) as client:
        while not done.is_set() and len(written) < 20:
            item_id = f"rollout-new-{len(written)}"
            client.upsert_items(
                [CatalogItem(item_id=item_id, title=f"Precision digital caliper {len(written)}", categories=["Tools"])],
                catalog=CATALOG,
                deadline=60,
            )
            written.append(item_id)
            time.sleep(0.2)


def test_reindex_switches_everything_at_once_and_rolls_back(suite: RunningSuite, models: Models, load: Load) -> None:
    with (
        grpc.insecure_channel(suite.address("retriever")) as retriever_channel,
        grpc.insecure_channel(suite.address("embedding")) as embedding_channel,
    ):
        retriever = retriever_pb2_grpc.RetrieverServiceStub(retriever_channel)
        embedding = embedding_pb2_grpc.EmbeddingServiceStub(embedding_channel)
        assert _encoders(retriever).serving == ""
        while len(load.answers) < 5 and not load.errors:
            time.sleep(0.2)
        before = list(load.answers)
        assert before and {a.model_version for a in before if a.model_version} == {models.base}

        done, written = threading.Event(), []
        writer = threading.Thread(target=_upsert_during, args=(suite, done, written), daemon=True)
        writer.start()
        finished = _reindex(suite, "--encoder", models.encoder)
        done.set()
        writer.join(timeout=120)
        assert finished.returncode == 0, finished.stderr[-3000:]
        state = _encoders(retriever)
        assert (state.serving, state.has_staged, state.staged) == (models.encoder, True, "")

        # Every item, those written during the reindex included, carries the adapted encoder's vector now.
        switched_at = len(load.answers)
        ids = [item.item_id for item in models.dataset.items[:5]] + written[:3]
        stored = retriever.GetItems(
            retriever_pb2.GetItemsRequest(item_ids=ids, with_vectors=True, catalog=CATALOG), timeout=30
        ).items
        page = retriever.ListItems(retriever_pb2.ListItemsRequest(catalog=CATALOG, limit=1000), timeout=30)
        assert not page.next_page_token
        listed = dict(zip((i.item_id for i in page.items), page.texts, strict=True))
        fresh = embedding.EmbedTexts(
            embedding_pb2.EmbedTextsRequest(
                texts=[listed[i] for i in ids], encoder_version=models.encoder, packed=True
            ),
            timeout=60,
        )
        expected = np.frombuffer(fresh.vectors_f32, dtype="<f4").reshape(len(ids), -1)
        for item, vector in zip(stored, expected, strict=True):
            assert float(np.dot(np.asarray(item.vector), vector)) > 0.999, item.item_id
        assert set(written) <= set(listed)

        # Answers after the switch are scored by the model trained on the adapted encoder.
        while len(load.answers) < switched_at + 5 and not load.errors:
            time.sleep(0.2)
        after = load.answers[switched_at:]
        assert {a.model_version for a in after if a.model_version} == {models.adapted}

        # Rollback: the kept copy serves again, with the items written since.
        rolled_back = _reindex(suite, "--encoder", "base")
        assert rolled_back.returncode == 0, rolled_back.stderr[-3000:]
        assert _encoders(retriever).serving == ""
        rolled_at = len(load.answers)
        while len(load.answers) < rolled_at + 5 and not load.errors:
            time.sleep(0.2)
        assert {a.model_version for a in load.answers[rolled_at:] if a.model_version} == {models.base}
        dropped = _reindex(suite, "--drop", models.encoder)
        assert dropped.returncode == 0, dropped.stderr[-3000:]
        assert not _encoders(retriever).has_staged

    # Recommend answered throughout, never degraded.
    assert load.errors == []
    assert len(load.answers) > 15
    degraded = [list(a.degraded_stages) for a in load.answers if a.degraded]
    assert degraded == []


def test_reindex_refuses_an_encoder_nothing_can_score(suite: RunningSuite, models: Models) -> None:
    missing = _reindex(suite, "--encoder", "20990101T000000Z-00000000")
    assert missing.returncode != 0
    assert "no encoder 20990101T000000Z-00000000" in missing.stderr
    with grpc.insecure_channel(suite.address("retriever")) as channel:
        assert not _encoders(retriever_pb2_grpc.RetrieverServiceStub(channel)).has_staged
