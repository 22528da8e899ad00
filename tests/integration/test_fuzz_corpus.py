"""The inputs that found bugs (fuzzing, the fault harness), replayed as they were sent, with the answer each
must get now. Add every new finding here."""

from __future__ import annotations

import grpc
import pytest

from recsys.preprocessor.v1 import preprocessor_pb2
from tests.integration.conftest import RunningSuite
from tests.integration.fuzzing import Method, call_raw, methods

INVALID = grpc.StatusCode.INVALID_ARGUMENT
BY_PATH = {
    m.path: m for service in ("gateway", "preprocessor", "embedding", "retriever", "ranker") for m in methods(service)
}
HUGE_ITEMS = preprocessor_pb2.BuildItemTextsRequest(
    items=[preprocessor_pb2.ItemFields(item_id="x", title="t", description="word " * 6_000)] * 513
).SerializeToString()

CORPUS: list[tuple[str, str, bytes, grpc.StatusCode]] = [
    # Bytes that do not parse were UNKNOWN (grpc's answer to a deserializer error).
    ("bad utf-8", "/recsys.gateway.v1.GatewayService/DeleteUser", b"\x0a\x02\xc3\x28", INVALID),
    ("truncated", "/recsys.retriever.v1.RetrieverService/GetItems", b"\x0a\x05ab", INVALID),
    ("wire type 7", "/recsys.embedding.v1.EmbeddingService/EmbedTexts", b"\x0f", INVALID),
    ("noise", "/recsys.ranker.v1.RankerService/ScoreCandidates", b"\xff\xff\xff\xff", INVALID),
    # A candidate without a vector reached the model and failed there: INTERNAL.
    ("empty vector", "/recsys.ranker.v1.RankerService/ScoreCandidates", b"\n\x02\x1a\x00", INVALID),
    # A 15 MB BuildItemTexts held the preprocessor's cleaning threads for 24 s.
    ("huge batch", "/recsys.preprocessor.v1.PreprocessorService/BuildItemTexts", HUGE_ITEMS, INVALID),
]


@pytest.mark.parametrize(("path", "payload", "expected"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_corpus(suite: RunningSuite, path: str, payload: bytes, expected: grpc.StatusCode) -> None:
    method: Method = BY_PATH[path]
    with grpc.insecure_channel(suite.address(method.service)) as channel:
        assert call_raw(channel, method, payload, timeout_s=30) == expected
