"""The embedding service: vectors match sentence-transformers, batching, validation, model info."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from services.embedding.app import EmbeddingApp, load_encoder
from services.embedding.config import EmbeddingSettings
from services.embedding.encoder import TextEncoder, default_model_path
from tests.conftest import serving

TEXTS = [
    "Gorilla Original Gorilla Glue, Waterproof Polyurethane Glue, 8 ounce Bottle, Brown.",
    "PORTER-CABLE 740000801 4 1/2-Inch x 10yd 80 Grit Adhesive-Backed Sanding Roll.",
    "a",
    "Digital caliper " * 200,
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return load_encoder(EmbeddingSettings())


def test_vectors_match_sentence_transformers(encoder: TextEncoder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(default_model_path()), device="cpu")
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    actual = np.stack([e.vector for e in encoder.encode(TEXTS)])
    cosines = (expected * actual).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
    assert np.allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)


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


async def test_model_info(stub: embedding_pb2_grpc.EmbeddingServiceStub) -> None:
    info = await stub.GetModelInfo(embedding_pb2.GetModelInfoRequest())
    assert info.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert (info.dimension, info.max_tokens, info.device, info.dtype, info.pooling) == (
        384,
        256,
        "cpu",
        "float32",
        "mean",
    )


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
