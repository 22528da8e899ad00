"""The preprocessor service over gRPC: cleaning, item texts, budget, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from recsys.preprocessor.v1 import preprocessor_pb2 as pb
from recsys.preprocessor.v1 import preprocessor_pb2_grpc
from services.preprocessor.app import PreprocessorApp, build_preprocessor
from services.preprocessor.config import PreprocessorSettings
from tests.conftest import serving


@pytest.fixture(scope="module")
async def stub() -> AsyncIterator[preprocessor_pb2_grpc.PreprocessorServiceStub]:
    settings = PreprocessorSettings(max_tokens=32, max_texts_per_request=8)
    async with serving(PreprocessorApp(settings, build_preprocessor(settings))) as channel:
        yield preprocessor_pb2_grpc.PreprocessorServiceStub(channel)


async def test_clean_texts_reports_changes(stub: preprocessor_pb2_grpc.PreprocessorServiceStub) -> None:
    response = await stub.CleanTexts(
        pb.CleanTextsRequest(texts=["<b>Ｗaterproof</b>   glue, mail me: jo@example.com", "plain"])
    )
    first, second = response.results
    assert first.text == "Waterproof glue, mail me: [EMAIL]"
    assert set(first.changes) >= {
        pb.CHANGE_KIND_MARKUP_REMOVED,
        pb.CHANGE_KIND_UNICODE_NORMALISED,
        pb.CHANGE_KIND_WHITESPACE_COLLAPSED,
        pb.CHANGE_KIND_EMAIL_MASKED,
    }
    assert second.text == "plain" and not second.changes
    assert response.max_tokens == 32


async def test_build_item_texts_within_budget(stub: preprocessor_pb2_grpc.PreprocessorServiceStub) -> None:
    item = pb.ItemFields(
        item_id="i1",
        title="Gorilla Glue",
        brand="Gorilla",
        categories=["Tapes, Adhesives & Sealants", "Urethane Adhesives"],
        description="A very long description " * 50,
    )
    (result,) = (await stub.BuildItemTexts(pb.BuildItemTextsRequest(items=[item]))).items
    assert result.item_id == "i1"
    assert result.text.text.startswith("Gorilla Glue. Gorilla. Tapes, Adhesives & Sealants > Urethane Adhesives.")
    assert result.text.truncated and result.text.token_count <= 32


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.CleanTextsRequest(texts=[]), "texts is empty"),
        (pb.CleanTextsRequest(texts=["x"] * 9), "the limit is 8"),
    ],
)
async def test_bad_clean_requests(
    stub: preprocessor_pb2_grpc.PreprocessorServiceStub, request_: pb.CleanTextsRequest, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CleanTexts(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


async def test_item_without_title_and_huge_text(stub: preprocessor_pb2_grpc.PreprocessorServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.BuildItemTexts(pb.BuildItemTextsRequest(items=[pb.ItemFields(item_id="x")]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    long = await stub.CleanTexts(pb.CleanTextsRequest(texts=["word " * 20_000]))
    assert long.results[0].truncated and long.results[0].token_count <= 32
    # Beyond the length limit the call is refused before any work (a 10 MB text held a thread for seconds).
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CleanTexts(pb.CleanTextsRequest(texts=["word " * 2_000_000]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the limit is 100000" in (caught.value.details() or "")
