"""The retriever service over gRPC on the embedded engine: write, read, search, users, bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format, struct_pb2

from recsys.retriever.v1 import retriever_pb2 as pb
from recsys.retriever.v1 import retriever_pb2_grpc
from services.retriever.app import RetrieverApp, open_store
from services.retriever.config import RetrieverSettings
from services.retriever.service import Retrieval
from services.retriever.store import Item, StoreInfo
from tests.conftest import serving

DIM = 8


def _vector(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).tolist()


def _payload(**values: object) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


@pytest.fixture(scope="module")
async def stub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[retriever_pb2_grpc.RetrieverServiceStub]:
    data_dir: Path = tmp_path_factory.mktemp("qdrant")
    settings = RetrieverSettings(data_dir=data_dir, dimension=DIM, max_limit=50, max_batch=20)
    async with serving(RetrieverApp(settings, open_store(settings))) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        items = [
            pb.Item(
                item_id=f"item-{n}",
                vector=_vector(n),
                payload=_payload(title=f"Item {n}", categories=["even" if n % 2 == 0 else "odd"], price=float(n)),
            )
            for n in range(10)
        ]
        assert (await stub.UpsertItems(pb.UpsertItemsRequest(items=items))).upserted == 10
        yield stub


async def test_search_filters_and_excludes(stub: retriever_pb2_grpc.RetrieverServiceStub) -> None:
    query = pb.SearchQuery(
        vector=_vector(4),
        limit=3,
        filter=pb.Filter(categories_any=["even"], ranges=[pb.RangeCondition(field="price", lte=8)]),
        exclude_ids=["item-0"],
        with_vectors=True,
    )
    (result,) = (await stub.SearchItems(pb.SearchItemsRequest(queries=[query]))).results
    ids = [item.item_id for item in result.items]
    assert ids[0] == "item-4" and "item-0" not in ids
    assert all(int(i.split("-")[1]) % 2 == 0 for i in ids)
    assert len(result.items[0].vector) == DIM


async def test_packed_results_equal_readable_ones(stub: retriever_pb2_grpc.RetrieverServiceStub) -> None:
    readable = pb.SearchQuery(vector=_vector(3), limit=5, with_vectors=True)
    packed = pb.SearchQuery(vector=_vector(3), limit=5, with_vectors=True, packed=True)
    plain, compact = (await stub.SearchItems(pb.SearchItemsRequest(queries=[readable, packed]))).results
    assert [i.item_id for i in plain.items] == [i.item_id for i in compact.items]
    for a, b in zip(plain.items, compact.items, strict=True):
        assert a.score == b.score and not b.vector and not b.payload.fields
        assert json.loads(b.payload_json) == json_format.MessageToDict(a.payload)
        assert np.frombuffer(b.vector_f32, dtype="<f4").tolist() == list(a.vector)


async def test_users_and_popularity(stub: retriever_pb2_grpc.RetrieverServiceStub) -> None:
    events = [pb.UserEvent(item_id="item-3", event_type="view", timestamp=1.0, weight=1.0)]
    profile = (await stub.AppendUserEvents(pb.AppendUserEventsRequest(user_id="u1", events=events))).profile
    assert len(profile.vector) == DIM and profile.events[0].item_id == "item-3"
    popular = await stub.ListPopularItems(pb.ListPopularItemsRequest(limit=1))
    assert popular.items[0].item_id == "item-3" and popular.items[0].score == 1
    await stub.DeleteUser(pb.DeleteUserRequest(user_id="u1"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUserProfile(pb.GetUserProfileRequest(user_id="u1"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_get_items_skip_missing_and_info(stub: retriever_pb2_grpc.RetrieverServiceStub) -> None:
    found = await stub.GetItems(pb.GetItemsRequest(item_ids=["nope", "item-1"], skip_missing=True))
    assert [i.item_id for i in found.items] == ["item-1"]
    info = await stub.GetCollectionInfo(pb.GetCollectionInfoRequest())
    assert (info.items, info.dimension, info.distance) == (10, DIM, "cosine")
    assert {"categories", "price", "in_stock"} <= {f.name for f in info.payload_fields}


@pytest.mark.parametrize(
    ("call", "request_", "code", "message"),
    [
        ("UpsertItems", pb.UpsertItemsRequest(), grpc.StatusCode.INVALID_ARGUMENT, "items is empty"),
        (
            "UpsertItems",
            pb.UpsertItemsRequest(items=[pb.Item(item_id="x", vector=[1.0, 2.0])]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "dimension",
        ),
        (
            "UpsertItems",
            pb.UpsertItemsRequest(items=[pb.Item(item_id="x", vector=[float("nan")] * DIM)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "",
        ),
        ("GetItems", pb.GetItemsRequest(item_ids=["ghost"]), grpc.StatusCode.NOT_FOUND, "ghost"),
        (
            "SearchItems",
            pb.SearchItemsRequest(queries=[pb.SearchQuery(vector=_vector(1), limit=0)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "limit is 0",
        ),
        (
            "SearchItems",
            pb.SearchItemsRequest(queries=[pb.SearchQuery(vector=_vector(1), limit=100000)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "limit is 100000",
        ),
        (
            "SearchItems",
            pb.SearchItemsRequest(
                queries=[
                    pb.SearchQuery(
                        vector=_vector(1), limit=5, filter=pb.Filter(flags=[pb.FlagCondition(field="colour")])
                    )
                ]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "colour",
        ),
        (
            "RecommendItems",
            pb.RecommendItemsRequest(positive_ids=["ghost"], limit=3),
            grpc.StatusCode.NOT_FOUND,
            "ghost",
        ),
        (
            "UpsertItems",
            pb.UpsertItemsRequest(items=[pb.Item(item_id="x", vector=_vector(1))], texts=["a", "b"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "2 texts for 1 items",
        ),
        (
            "UpsertItems",
            pb.UpsertItemsRequest(items=[pb.Item(item_id="x", vector=_vector(1), payload=_payload(item_text="t"))]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "reserved name 'item_text'",
        ),
        (
            "UpsertItems",
            pb.UpsertItemsRequest(
                items=[pb.Item(item_id="x", vector=_vector(1), payload=_payload(staged_behind=True))]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "reserved name 'staged_behind'",
        ),
        (
            "UpsertItems",
            pb.UpsertItemsRequest(items=[pb.Item(item_id="x", vector=_vector(1))], encoder_version="v9"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "this catalog serves the base encoder",
        ),
        (
            "SwitchEncoder",
            pb.SwitchEncoderRequest(encoder_version="v9"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "encoder 'v9' is not staged: run `recsys reindex --encoder v9` first",
        ),
        (
            "ListItems",
            pb.ListItemsRequest(limit=5, page_token="not-a-token"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "is not one this store returned",
        ),
    ],
)
async def test_bad_input(
    stub: retriever_pb2_grpc.RetrieverServiceStub,
    call: str,
    request_: object,
    code: grpc.StatusCode,
    message: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, call)(request_)
    assert caught.value.code() == code, caught.value.details()
    assert message in (caught.value.details() or "")
    assert (await stub.GetCollectionInfo(pb.GetCollectionInfoRequest())).items == 10


async def test_vectors_of_another_encoder_are_refused_naming_the_served_one(
    stub: retriever_pb2_grpc.RetrieverServiceStub,
) -> None:
    request = pb.SearchItemsRequest(queries=[pb.SearchQuery(vector=_vector(1), limit=3)], encoder_version="v2")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SearchItems(request)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(caught.value.trailing_metadata() or ())["recsys-serving-encoder"] == "base"
    info = await stub.GetCollectionInfo(pb.GetCollectionInfoRequest())
    assert (info.encoders.serving, info.encoders.has_staged) == ("", False)
    request.encoder_version = ""
    assert len((await stub.SearchItems(request)).results[0].items) == 3


class _BuildingStore:
    """Just enough of an edge store for the idle-build policy: a fixed size, and builds that are refused
    while `busy`."""

    dimension = 4

    def __init__(self, items: int, indexed: int) -> None:
        self.items, self.indexed, self.busy, self.starts = items, indexed, False, 0
        self.schema: dict[str, object] = {}

    def info(self) -> StoreInfo:
        return StoreInfo("fake", self.items, 0, self.indexed, 4, "cosine", (), self.items == self.indexed)

    def start_index_build(self) -> bool:
        self.starts += 1
        return not self.busy

    def upsert_items(self, items: object, encoder_version: str | None = None, staged: bool = False) -> int:
        return 1

    def close(self) -> None:
        return None


async def test_idle_build_once_per_quiet_spell_and_retried_while_another_runs() -> None:
    store = _BuildingStore(items=500, indexed=0)
    retrieval = Retrieval(
        store,  # type: ignore[arg-type]
        max_limit=10,
        max_batch=10,
        index_min_unindexed=10_000,
        workers=1,
        index_idle_s=0.3,
        index_idle_min_unindexed=100,
    )
    try:
        assert not await retrieval.build_index_if_idle() and store.starts == 0  # not quiet long enough yet
        await asyncio.sleep(0.35)
        store.busy = True
        assert not await retrieval.build_index_if_idle()
        assert not await retrieval.build_index_if_idle() and store.starts == 2  # retried while one runs
        store.busy = False
        assert await retrieval.build_index_if_idle() and store.starts == 3
        await asyncio.sleep(0.35)
        assert not await retrieval.build_index_if_idle() and store.starts == 3  # once per quiet spell
        await retrieval.upsert_items([Item("a", (1.0, 0.0, 0.0, 0.0), {})])
        store.indexed = 450  # 50 unindexed: fewer than 100
        await asyncio.sleep(0.35)
        assert not await retrieval.build_index_if_idle() and store.starts == 3
        off = Retrieval(store, 10, 10, 10_000, 1, index_idle_s=0.0)  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert not await off.build_index_if_idle()
        await off.close()
    finally:
        await retrieval.close()
