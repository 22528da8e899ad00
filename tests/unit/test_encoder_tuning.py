"""Adapting the encoder to the interactions: the pairs, the loss, the cached training forward against the served
one, and `recsys train` publishing an adapted encoder as a version the embedding service loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from services.cli import training as cli_training
from services.cli.training import item_texts, train_and_publish
from services.datasets.loaders import load_dataset
from services.embedding.app import encoder_at, load_encoder
from services.embedding.config import EmbeddingSettings
from services.embedding.encoder import default_model_path
from services.embedding.versions import (
    ENCODERS_DIR,
    METADATA_FILE,
    EncoderMetadata,
    list_versions,
    read_head,
    write_model_folder,
)
from services.ranker.checkpoints import METADATA_FILE as CHECKPOINT_METADATA
from services.ranker.checkpoints import CheckpointMetadata, list_checkpoints
from services.ranker.encoder_tuning import (
    CachedItems,
    TunedEncoder,
    TuningConfig,
    contrastive_loss,
    head_loss,
    history_examples,
    train_head,
    training_pairs,
    tune_encoder,
)
from services.ranker.scoring import Gain
from services.ranker.splits import Case, Split, loo_split
from services.ranker.training import TrainConfig
from tests.conftest import SCIENTIFIC

TINY = TrainConfig(dim=16, layers=1, heads=1, max_len=10, max_epochs=1, batch_size=64, seed=0, tune_users=100)
# Texts are read whole (the served limit), so the training forward and the served one see the same tokens.
QUICK = TuningConfig(trained_layers=1, max_tokens=256, batch_size=16, max_epochs=2, pairs_per_epoch=64, eval_users=50)


def test_pairs_are_each_item_with_the_next_ones_of_its_history() -> None:
    pairs = training_pairs([(0, 1, 2, 1), (3,), (4, 4, 5)], window=2)
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 2], [2, 1], [4, 5], [4, 5]]
    assert training_pairs([(3,)], window=1).shape == (0, 2)


def test_the_loss_never_counts_the_same_item_as_a_negative() -> None:
    eye = torch.eye(4)
    ids = torch.tensor([0, 1, 2, 3])
    aligned = contrastive_loss(eye, eye, ids, ids, tau=0.05)
    # Rows 0 and 1 share their positive item: each other's column is that item, not a negative.
    twice = torch.stack([eye[0], eye[0], eye[2], eye[3]])
    shared = contrastive_loss(twice, twice, torch.tensor([9, 8, 2, 3]), torch.tensor([0, 0, 2, 3]), tau=0.05)
    assert float(aligned) < 1e-6 and float(shared) < 1e-6


@pytest.fixture(scope="module")
def catalog() -> tuple[Split, list[str]]:
    dataset = load_dataset(SCIENTIFIC, limit_items=120)
    return loo_split(dataset), item_texts(dataset.items)


@pytest.fixture(scope="module")
def tuned(catalog: tuple[Split, list[str]]) -> TunedEncoder:
    split, texts = catalog
    return tune_encoder(split, texts, default_model_path(), QUICK, progress=False)


def test_only_the_top_layers_are_trained(tuned: TunedEncoder) -> None:
    base = AutoModel.from_pretrained(default_model_path(), local_files_only=True)
    top = f"encoder.layer.{base.config.num_hidden_layers - QUICK.trained_layers}."
    adapted = dict(tuned.model.named_parameters())
    changed = {name for name, p in base.named_parameters() if not torch.equal(p, adapted[name])}
    assert all(name.startswith(top) for name in changed)
    assert bool(changed) == (tuned.best_epoch > 0)  # an epoch that beat the base model on validation is kept
    assert len(tuned.val_ndcg) - 1 <= QUICK.max_epochs and tuned.best_epoch == int(np.argmax(tuned.val_ndcg))


def test_the_cached_training_forward_reads_items_as_the_service_serves_them(
    tuned: TunedEncoder, catalog: tuple[Split, list[str]], tmp_path: Path
) -> None:
    """The vectors training scores (cached lower layers, top layers in the packed forward) are the vectors the
    embedding service makes from the saved model folder."""
    _, texts = catalog
    tokens = tuned.tokenizer(texts, truncation=True, max_length=QUICK.max_tokens)["input_ids"]
    training = CachedItems(tuned.model, tokens, QUICK, torch.device("cpu")).catalog()
    tuned.save(tmp_path)
    served = encoder_at(EmbeddingSettings(), tmp_path, model_id="adapted")
    vectors = np.stack([e.vector for e in served.encode(texts)])
    assert served.max_tokens == 256  # the sentence-transformers limit travelled with the folder
    assert float((training * vectors).sum(1).min()) > 0.995


def test_train_publishes_an_adapted_encoder_only_where_it_pays(
    tuned: TunedEncoder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dataset = load_dataset(SCIENTIFIC, limit_items=120)
    vectors = np.random.default_rng(0).normal(size=(len(dataset.items), 384)).astype(np.float32)
    monkeypatch.setattr(cli_training, "embed_items", lambda items, cache_dir: (vectors, "base-model"))
    monkeypatch.setattr(cli_training, "adapt_encoder", lambda split, texts, config, progress=True: (tuned, vectors))
    checkpoints = tmp_path / "checkpoints"

    # Within noise (the same vectors): the frozen encoder is kept and no version is written.
    path, _ = train_and_publish(dataset, checkpoints, tmp_path / "cache", TINY, tuning=QUICK)
    assert path is not None and CheckpointMetadata.from_file(path / CHECKPOINT_METADATA).encoder_version == ""
    assert list_versions(checkpoints / ENCODERS_DIR) == []

    # Beyond noise: the adapted encoder is a version beside the checkpoint, which names it.
    monkeypatch.setattr(cli_training, "paired_gain", lambda model, simpler, seed: Gain(0.01, 0.005, 0.02, 10))
    path, _ = train_and_publish(dataset, checkpoints, tmp_path / "cache", TINY, tuning=QUICK)
    assert path is not None
    metadata = CheckpointMetadata.from_file(path / CHECKPOINT_METADATA)
    (version,) = list_versions(checkpoints / ENCODERS_DIR)
    assert metadata.encoder_version == version
    # The frozen one is published beside it, for the catalog that still serves the base encoder; the adapted
    # one is the newest.
    published = [
        CheckpointMetadata.from_file(p / CHECKPOINT_METADATA).encoder_version for p in list_checkpoints(checkpoints)
    ]
    assert published == [version, "", ""]
    assert metadata.embedding_model_id == f"sentence-transformers/all-MiniLM-L6-v2@{version}"
    encoder = EncoderMetadata.from_file(checkpoints / ENCODERS_DIR / version / METADATA_FILE)
    assert encoder.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert encoder.dataset_hash == dataset.content_hash() and encoder.metrics["val_ndcg@10_gain_low"] == 0.005
    assert encoder.tuning["trained_layers"] == QUICK.trained_layers
    # The embedding service loads it by name.
    served = load_encoder(EmbeddingSettings(encoder_dir=checkpoints / ENCODERS_DIR, encoder_version=version))
    assert served.model_id == metadata.embedding_model_id


def test_history_examples_are_each_item_after_the_most_recent_ones_before_it() -> None:
    examples = history_examples([(0, 1, 2, 1), (3,), (4, 5, 6)], history=2)
    # (0, 1, 2) then 1 again: an item the user had is no example.
    assert examples == [((0,), 1), ((0, 1), 2), ((4,), 5), ((4, 5), 6)]


def test_the_head_learns_what_follows_a_history_and_is_kept_only_where_it_pays() -> None:
    # Items in pairs (2k, 2k + 1): users take one, then the other. Random vectors say nothing of that; a head
    # trained on the pairs does, by validation.
    rng = np.random.default_rng(0)
    n = 40
    vectors = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(n, 16)).astype(np.float32)), dim=-1)
    firsts = rng.integers(0, n // 2, size=400) * 2
    train = [(int(a), int(a) + 1) for a in firsts]
    val = [Case(f"v{a}", (int(a),), (int(a) + 1,)) for a in range(0, n, 2)]
    split = Split("loo", tuple(f"i{i}" for i in range(n)), tuple(train), tuple(val), tuple(val))
    config = TuningConfig(head_epochs=30, head_lr=3e-2, head_batch_size=64)
    head, history = train_head(vectors, split, val, config)
    assert head is not None and max(history[1:]) > history[0] + 0.2
    assert history[int(np.argmax(history))] == max(history)
    # Nothing to learn (every item follows itself only, which is no example): the vectors stay as they are.
    still = Split("loo", split.item_ids, tuple((i,) for i in range(n)), tuple(val), tuple(val))
    assert train_head(vectors, still, val, TuningConfig(head_epochs=2))[0] is None


def test_the_head_never_learns_from_items_no_training_history_holds() -> None:
    # Were an item without interactions a negative, the head would learn to bury it, and every new item with it:
    # on ml-100k's cold split text alone fell to 0.0 that way. Its vector does not touch the loss.
    rng = np.random.default_rng(0)
    vectors = torch.from_numpy(rng.normal(size=(6, 8)).astype(np.float32))
    untrained = torch.tensor([False, False, False, False, True, True])
    batch = [((0, 1), 2), ((2,), 3)]
    head = torch.eye(8)
    moved = vectors.clone()
    moved[4:] = torch.from_numpy(rng.normal(size=(2, 8)).astype(np.float32))
    assert torch.equal(head_loss(vectors, head, batch, 0.1, untrained), head_loss(moved, head, batch, 0.1, untrained))
    every = torch.zeros(6, dtype=torch.bool)  # with every item a candidate, the moved ones count
    assert not torch.equal(head_loss(vectors, head, batch, 0.1, every), head_loss(moved, head, batch, 0.1, every))


def test_a_folder_with_a_head_is_served_through_it(tmp_path: Path) -> None:
    """write_model_folder's head is a sentence-transformers Dense module the embedding service applies to the
    pooled vector: the vectors are the base model's through the head, normalised."""
    base = default_model_path()
    model = AutoModel.from_pretrained(base, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    head = torch.linalg.qr(torch.from_numpy(np.random.default_rng(0).normal(size=(384, 384)).astype(np.float32)))[0]
    head = head * torch.linspace(0.5, 2.0, 384)[:, None]  # not a rotation: cosines change
    write_model_folder(tmp_path / "head", model, tokenizer, base, head)
    assert torch.equal(read_head(tmp_path / "head"), head) and read_head(base) is None
    texts = ["a microscope slide box", "nitrile gloves, size M", "a 500 ml borosilicate beaker"]
    plain = np.stack([e.vector for e in encoder_at(EmbeddingSettings(), base, model_id="base").encode(texts)])
    served = encoder_at(EmbeddingSettings(), tmp_path / "head", model_id="adapted")
    through = np.stack([e.vector for e in served.encode(texts)])
    expected = torch.nn.functional.normalize(torch.from_numpy(plain) @ head.T, dim=-1).numpy()
    np.testing.assert_allclose(through, expected, atol=2e-3)
    assert served.dimension == 384
    config = tmp_path / "head" / "2_Dense" / "config.json"
    config.write_text(config.read_text().replace("Identity", "Tanh"))
    with pytest.raises(ValueError, match="linear head only"):
        read_head(tmp_path / "head")
