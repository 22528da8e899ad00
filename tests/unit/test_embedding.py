"""The embedding service: vectors match sentence-transformers, batching, validation, model info."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest

from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from services.embedding.app import EmbeddingApp, VersionFolder, forward_batch_size, load_encoder
from services.embedding.config import EmbeddingSettings
from services.embedding.embedder import Embedder, Encoder, Limits
from services.embedding.encoder import EncodedText, TextEncoder, TokenizedText, default_model_path, resolve_dtype
from services.embedding.unpadded import packed_rows
from services.embedding.versions import METADATA_FILE, EncoderMetadata, list_versions, save_version
from tests.conftest import SCIENTIFIC, serving

TEXTS = [
    "Gorilla Original Gorilla Glue, Waterproof Polyurethane Glue, 8 ounce Bottle, Brown.",
    "PORTER-CABLE 740000801 4 1/2-Inch x 10yd 80 Grit Adhesive-Backed Sanding Roll.",
    "a",
    "Digital caliper " * 200,
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return load_encoder(EmbeddingSettings())


@pytest.fixture(scope="module")
def fp32_encoder() -> TextEncoder:
    return load_encoder(EmbeddingSettings(dtype="float32"))


@pytest.fixture(scope="module")
def item_texts() -> list[str]:
    from services.cli.training import item_texts as build
    from services.datasets.loaders import load_dataset

    return build(load_dataset(SCIENTIFIC, limit_items=160).items)


def test_vectors_match_sentence_transformers(fp32_encoder: TextEncoder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(default_model_path()), device="cpu")
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    actual = np.stack([e.vector for e in fp32_encoder.encode(TEXTS)])
    cosines = (expected * actual).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
    assert np.allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_fast_path_matches_fp32_on_item_texts(fp32_encoder: TextEncoder, item_texts: list[str], dtype: str) -> None:
    """Any faster path (the default one included) gives the fp32 vectors: cosine >= 0.999 on real item texts."""
    fast = load_encoder(EmbeddingSettings(dtype=dtype)) if dtype != "auto" else None
    encoder = fast or load_encoder(EmbeddingSettings())
    texts = [*item_texts, *TEXTS]
    expected = np.stack([e.vector for e in fp32_encoder.encode(texts)])
    actual = np.stack([e.vector for e in encoder.encode(texts)])
    cosines = (expected * actual).sum(axis=1)
    assert cosines.min() >= 0.999, (encoder.backend, cosines.min())
    assert [e.token_count for e in encoder.encode(TEXTS)] == [e.token_count for e in fp32_encoder.encode(TEXTS)]


def test_unpadded_forward_equals_the_padded_one(fp32_encoder: TextEncoder, item_texts: list[str]) -> None:
    """The packed BERT forward (the CPU default) gives transformers' padded forward's vectors, texts of very
    different lengths (3 to 256 tokens) in one batch."""
    padded = load_encoder(EmbeddingSettings(dtype="float32", remove_padding=False))
    assert fp32_encoder.backend == "torch-cpu-fp32-unpadded" and padded.backend == "torch-cpu-fp32"
    texts = [*item_texts, *TEXTS]
    expected = np.stack([e.vector for e in padded.encode(texts)])
    actual = np.stack([e.vector for e in fp32_encoder.encode(texts)])
    assert np.abs(expected - actual).max() < 1e-5


def test_packed_rows_take_few_shapes() -> None:
    """The packed matrix's row count is rounded so the CPU kernels' per-shape cache stays small."""
    rows = {tokens: packed_rows(tokens) for tokens in range(1, 8193)}
    assert all(tokens <= r < tokens + max(8, tokens // 8) for tokens, r in rows.items())
    assert len(set(rows.values())) <= 64


def test_forward_batch_size_defaults_by_device() -> None:
    assert forward_batch_size(EmbeddingSettings()) == 32
    assert forward_batch_size(EmbeddingSettings(max_batch_size=8)) == 8
    assert forward_batch_size(EmbeddingSettings(forward_batch_size=16)) == 16
    assert forward_batch_size(EmbeddingSettings(forward_batch_size=512, max_batch_size=256)) == 256
    assert forward_batch_size(EmbeddingSettings(device="cuda:0", max_batch_size=2048)) == 2048


def test_tokens_match_the_tokenizer_call(encoder: TextEncoder, item_texts: list[str]) -> None:
    texts = [*item_texts[:50], *TEXTS]
    reference = encoder.tokenizer(texts, truncation=True, max_length=encoder.max_tokens)["input_ids"]
    assert [t.ids for t in encoder.tokenize(texts)] == reference


def test_buckets_bound_count_and_padded_tokens(encoder: TextEncoder) -> None:
    lengths = [5, 300, 12, 12, 256, 40, 7, 9, 64, 64, 3] * 10
    buckets = encoder.buckets(lengths)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for bucket in buckets:
        longest = max(lengths[i] for i in bucket)
        assert len(bucket) <= encoder.batch_size
        assert len(bucket) == 1 or len(bucket) * longest <= encoder.max_batch_tokens
    # Sorted by length: little padding.
    assert all(max(lengths[i] for i in b) <= min(lengths[i] for i in c) for b, c in itertools.pairwise(buckets))


def test_truncation_is_reported(encoder: TextEncoder) -> None:
    short, long = encoder.encode(["waterproof glue", "waterproof glue " * 400])
    assert not short.truncated and short.token_count == 5
    assert long.truncated and long.token_count == encoder.max_tokens


@pytest.fixture(scope="module")
async def stub(encoder: TextEncoder) -> AsyncIterator[embedding_pb2_grpc.EmbeddingServiceStub]:
    settings = EmbeddingSettings(max_text_chars=10_000, max_texts_per_request=64)
    async with serving(EmbeddingApp(settings, encoder)) as channel:
        yield embedding_pb2_grpc.EmbeddingServiceStub(channel)


async def test_concurrent_requests_are_answered_in_order(
    stub: embedding_pb2_grpc.EmbeddingServiceStub, encoder: TextEncoder
) -> None:
    requests = [embedding_pb2.EmbedTextsRequest(texts=[text]) for text in TEXTS]
    responses = await asyncio.gather(*(stub.EmbedTexts(r) for r in requests))
    direct = encoder.encode(TEXTS)
    for response, expected in zip(responses, direct, strict=True):
        vector = np.asarray(response.embeddings[0].values, dtype=np.float32)
        assert len(vector) == 384
        assert float(vector @ expected.vector) > 0.9999


async def test_packed_vectors_equal_the_values(stub: embedding_pb2_grpc.EmbeddingServiceStub) -> None:
    texts = [*TEXTS, "waterproof glue " * 400]
    plain = await stub.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=texts))
    packed = await stub.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=texts, packed=True))
    assert not plain.vectors_f32 and all(not e.values for e in packed.embeddings)
    matrix = np.frombuffer(packed.vectors_f32, dtype="<f4").reshape(len(texts), -1)
    np.testing.assert_allclose(matrix, [e.values for e in plain.embeddings], atol=1e-6)
    assert [(e.token_count, e.truncated) for e in packed.embeddings] == [
        (e.token_count, e.truncated) for e in plain.embeddings
    ]
    assert packed.embeddings[-1].truncated and packed.model_id == plain.model_id


async def test_model_info(stub: embedding_pb2_grpc.EmbeddingServiceStub) -> None:
    info = await stub.GetModelInfo(embedding_pb2.GetModelInfoRequest())
    assert info.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    dtype = resolve_dtype("auto", "cpu")
    assert (info.dimension, info.max_tokens, info.device, info.dtype, info.pooling) == (
        384,
        256,
        "cpu",
        dtype,
        "mean",
    )
    assert info.backend == ("torch-cpu-bf16-autocast" if dtype == "bfloat16" else "torch-cpu-fp32") + "-unpadded"
    assert info.max_batch_tokens == EmbeddingSettings().max_batch_tokens
    assert (info.max_batch_size, info.forward_batch_size) == (128, 32)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "texts is empty"),
        (["ok", "   "], "texts[1] is empty"),
        (["x" * 10_001], "the limit is 10000"),
        (["t"] * 65, "split the batch"),
    ],
)
async def test_bad_input_is_invalid_argument(
    stub: embedding_pb2_grpc.EmbeddingServiceStub, texts: list[str], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=texts))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    assert (await stub.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=["still serving"]))).embeddings


class RecordingEncoder:
    """A fake two-stage encoder that records the threads and the batches it ran on."""

    model_id = "recording"
    dimension = 4
    max_tokens = 16
    device = "cpu"
    dtype = "float32"
    backend = "fake"

    def __init__(self) -> None:
        self.tokenize_threads: list[str] = []
        self.batches: list[list[int]] = []

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        self.tokenize_threads.append(threading.current_thread().name)
        return [TokenizedText(list(range(len(t.split()))), False) for t in texts]

    def encode_tokens(self, items: Sequence[TokenizedText]) -> list[EncodedText]:
        time.sleep(0.01)
        self.batches.append([i.token_count for i in items])
        return [EncodedText(np.full(4, 0.5, dtype=np.float32), i.token_count, False) for i in items]

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        return self.encode_tokens(self.tokenize(texts))


async def test_embedder_tokenises_off_the_loop_and_batches_by_tokens() -> None:
    encoder = RecordingEncoder()
    embedder = Embedder(
        encoder,
        Limits(64, 10_000),
        max_batch_size=64,
        max_batch_wait_s=0.02,
        max_queued_texts=1000,
        max_batch_tokens=40,
        tokenizer_threads=2,
    )
    texts = [" ".join(["w"] * n) for n in (10, 10, 10, 30, 5, 5, 25)]
    results = await asyncio.gather(*(embedder.embed([t]) for t in texts))
    assert [r.items[0].token_count for r in results] == [10, 10, 10, 30, 5, 5, 25]
    assert all(name.startswith("tokenizer") for name in encoder.tokenize_threads)
    assert all(sum(batch) <= 40 for batch in encoder.batches), encoder.batches
    assert len(encoder.batches) < len(texts), "requests shared batches"
    await embedder.close()


def test_packed_forward_on_a_small_random_bert_and_what_it_supports() -> None:
    """The packed forward against transformers' on a randomly initialised BERT (no download): rows of one token
    up to the full width, including a batch whose rows all have the same length; other layouts fall back."""
    import torch
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    from services.embedding.unpadded import UnpaddedBert, supports

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    model = BertModel(config).eval()
    packed = UnpaddedBert(model)
    for lengths in ([1, 7, 3, 12], [5, 5, 5]):
        width = max(lengths)
        mask = np.array([[column < n for column in range(width)] for n in lengths])
        ids = torch.randint(1, 50, (len(lengths), width)) * torch.from_numpy(mask)
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=torch.from_numpy(mask).long()).last_hidden_state
            weights = torch.from_numpy(mask).unsqueeze(-1).float()
            expected = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
            actual = packed.mean_pooled(ids, mask)
        assert torch.allclose(actual, expected, atol=1e-5), (lengths, (actual - expected).abs().max())
    assert not supports(BertModel(BertConfig(**{**config.to_dict(), "position_embedding_type": "relative_key"})))
    assert not supports(DistilBertModel(DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, hidden_dim=64)))


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An encoder folder holding one version: the packaged model with its last layer's output halved, so its
    vectors differ from the base model's (no training needed)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    base = default_model_path()
    model = AutoModel.from_pretrained(base, local_files_only=True)
    with torch.no_grad():
        model.encoder.layer[-1].output.dense.weight.mul_(0.5)
    folder = tmp_path_factory.mktemp("encoders")
    version = save_version(
        folder,
        model,
        AutoTokenizer.from_pretrained(base, local_files_only=True),
        base,
        base_model="sentence-transformers/all-MiniLM-L6-v2",
        dataset_name="tiny",
        dataset_hash="abc",
        metrics={"val_ndcg@10": 0.1},
        tuning={"layers": 1},
    )
    return folder, version


class CountingVersions:
    """The service's loader, recording the thread of every load."""

    def __init__(self, folder: VersionFolder) -> None:
        self.folder = folder
        self.threads: list[threading.Thread] = []

    def available(self) -> list[str]:
        return self.folder.available()

    def load(self, version: str) -> Encoder:
        self.threads.append(threading.current_thread())
        return self.folder.load(version)


def test_a_saved_version_is_complete_and_listed_newest_first(encoder_dir: tuple[Path, str], tmp_path: Path) -> None:
    folder, version = encoder_dir
    metadata = EncoderMetadata.from_file(folder / version / METADATA_FILE)
    assert (metadata.version, metadata.base_model, metadata.dataset_hash) == (
        version,
        "sentence-transformers/all-MiniLM-L6-v2",
        "abc",
    )
    assert (folder / version / "sentence_bert_config.json").is_file()  # the token limit travels with it
    assert list_versions(folder) == [version]
    (tmp_path / ".tmp-half-written").mkdir()  # a write in progress, or one that died, is never listed
    (tmp_path / "20990101T000000Z-00000000").mkdir()  # nor a folder without its files
    assert list_versions(tmp_path) == [] and list_versions(None) == []


async def test_the_service_holds_two_encoders_and_loads_the_second_once_off_the_loop(
    encoder: TextEncoder, encoder_dir: tuple[Path, str]
) -> None:
    folder, version = encoder_dir
    settings = EmbeddingSettings(encoder_dir=folder)
    versions = CountingVersions(VersionFolder(settings))
    texts = TEXTS[:2]
    base_vectors = np.stack([e.vector for e in encoder.encode(texts)])
    version_vectors = np.stack([e.vector for e in load_encoder(settings, version).encode(texts)])
    assert float((base_vectors * version_vectors).sum(1).max()) < 0.999, "the version reads differently"
    async with serving(EmbeddingApp(settings, encoder, versions)) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        info = await stub.GetModelInfo(embedding_pb2.GetModelInfoRequest())
        assert (info.encoder_version, list(info.loaded_encoder_versions)) == ("", [""])
        assert list(info.available_encoder_versions) == [version]

        asked = embedding_pb2.EmbedTextsRequest(texts=texts, encoder_version=version, packed=True)
        responses = await asyncio.gather(*(stub.EmbedTexts(asked) for _ in range(4)))
        assert len(versions.threads) == 1, "loaded once"
        assert versions.threads[0] is not threading.main_thread()
        for response in responses:
            assert response.encoder_version == version
            assert response.model_id == f"sentence-transformers/all-MiniLM-L6-v2@{version}"
            got = np.frombuffer(response.vectors_f32, dtype="<f4").reshape(len(texts), -1)
            assert float((got * version_vectors).sum(1).min()) > 0.9999

        current = await stub.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=texts, packed=True))
        assert (current.encoder_version, current.model_id) == ("", "sentence-transformers/all-MiniLM-L6-v2")
        got = np.frombuffer(current.vectors_f32, dtype="<f4").reshape(len(texts), -1)
        assert float((got * base_vectors).sum(1).min()) > 0.9999
        base = await stub.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=texts, encoder_version="base"))
        assert base.encoder_version == "" and len(versions.threads) == 1

        info = await stub.GetModelInfo(embedding_pb2.GetModelInfoRequest())
        assert (info.encoder_version, list(info.loaded_encoder_versions)) == ("", ["", version])
        assert info.model_id == "sentence-transformers/all-MiniLM-L6-v2"

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=texts, encoder_version="20260101T000000Z-0"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert f"available: base, {version}" in (caught.value.details() or "")


async def test_a_service_serving_a_version_still_embeds_with_the_base_model_by_name(
    encoder: TextEncoder, encoder_dir: tuple[Path, str]
) -> None:
    folder, version = encoder_dir
    settings = EmbeddingSettings(encoder_dir=folder, encoder_version=version, max_encoders=1)
    current = load_encoder(settings)
    async with serving(EmbeddingApp(settings, current, VersionFolder(settings))) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        info = await stub.GetModelInfo(embedding_pb2.GetModelInfoRequest())
        assert (info.encoder_version, info.model_id) == (version, f"sentence-transformers/all-MiniLM-L6-v2@{version}")
        response = await stub.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=TEXTS[:1]))
        assert response.encoder_version == version
        # One encoder at most here: the base model cannot join, and the message says what to do.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=TEXTS[:1], encoder_version="base"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "EMBEDDING_MAX_ENCODERS" in (caught.value.details() or "")
    settings = EmbeddingSettings(encoder_dir=folder, encoder_version=version)
    async with serving(EmbeddingApp(settings, current, VersionFolder(settings))) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        base = await stub.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=TEXTS[:1], encoder_version="base"))
        assert base.encoder_version == "" and base.model_id == "sentence-transformers/all-MiniLM-L6-v2"
        expected = encoder.encode(TEXTS[:1])[0].vector
        assert float(np.asarray(base.embeddings[0].values) @ expected) > 0.9999


def test_an_unknown_version_in_the_settings_fails_at_start_naming_the_available_ones(
    encoder_dir: tuple[Path, str],
) -> None:
    folder, version = encoder_dir
    with pytest.raises(FileNotFoundError, match=f"available: {version}"):
        load_encoder(EmbeddingSettings(encoder_dir=folder, encoder_version="20260101T000000Z-0"))
