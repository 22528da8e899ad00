"""Catalogs over gRPC: kept apart, names checked, lazily created, limited in number, found again on restart; on
the embedded engine and on qdrant-client's local mode (the server layout: collections with the name as prefix)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2

from recsys.retriever.v1 import retriever_pb2 as pb
from recsys.retriever.v1 import retriever_pb2_grpc
from services.retriever.app import RetrieverApp, open_store
from services.retriever.client_store import ClientVectorStore
from services.retriever.config import RetrieverSettings
from services.retriever.store import VectorStore
from tests.conftest import serving

DIM = 8
Stub = retriever_pb2_grpc.RetrieverServiceStub


def _vector(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).tolist()


def _items(tag: str, n: int = 4, seed: int = 0) -> list[pb.Item]:
    items = []
    for i in range(n):
        payload = struct_pb2.Struct()
        payload.update({"title": f"{tag} {i}", "categories": [tag]})
        items.append(pb.Item(item_id=f"item-{i}", vector=_vector(seed + i), payload=payload))
    return items


def _settings(data_dir: Path, **overrides: object) -> RetrieverSettings:
    return RetrieverSettings(data_dir=data_dir, dimension=DIM, max_limit=50, max_batch=20, **overrides)  # type: ignore[arg-type]


def _edge(settings: RetrieverSettings) -> VectorStore:
    return open_store(settings)


def _client(settings: RetrieverSettings) -> VectorStore:
    return ClientVectorStore.local(settings.data_dir / "client", dimension=DIM)


@asynccontextmanager
async def running(
    data_dir: Path, backend: Callable[[RetrieverSettings], VectorStore] = _edge, **overrides: object
) -> AsyncIterator[Stub]:
    settings = _settings(data_dir, **overrides)
    async with serving(RetrieverApp(settings, backend(settings))) as channel:
        yield retriever_pb2_grpc.RetrieverServiceStub(channel)


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code(), caught.value.details() or ""


@pytest.mark.parametrize("backend", [_edge, _client], ids=["edge", "client"])
async def test_catalogs_are_kept_apart(tmp_path: Path, backend: Callable[[RetrieverSettings], VectorStore]) -> None:
    async with running(tmp_path, backend) as stub:
        await stub.UpsertItems(pb.UpsertItemsRequest(catalog="books", items=_items("book", 4, seed=0)))
        await stub.UpsertItems(pb.UpsertItemsRequest(catalog="films", items=_items("film", 3, seed=100)))
        # The same item id is two different items.
        for catalog, title in (("books", "book 1"), ("films", "film 1")):
            got = await stub.GetItems(pb.GetItemsRequest(catalog=catalog, item_ids=["item-1"]))
            assert got.items[0].payload["title"] == title
        code, details = await _code(stub.GetItems(pb.GetItemsRequest(item_ids=["item-1"])))
        assert code == grpc.StatusCode.NOT_FOUND and "item-1" in details  # the default catalog has none
        found = await stub.SearchItems(
            pb.SearchItemsRequest(catalog="films", queries=[pb.SearchQuery(vector=_vector(0), limit=10)])
        )
        assert {i.payload["categories"][0] for i in found.results[0].items} == {"film"}
        assert len(found.results[0].items) == 3
        # Users and their events too: the same user id in two catalogs are two users.
        event = pb.UserEvent(item_id="item-2", event_type="view", timestamp=1.0, weight=1.0)
        await stub.AppendUserEvents(pb.AppendUserEventsRequest(catalog="books", user_id="u1", events=[event]))
        code, _ = await _code(stub.GetUserProfile(pb.GetUserProfileRequest(catalog="films", user_id="u1")))
        assert code == grpc.StatusCode.NOT_FOUND
        popular = await stub.ListPopularItems(pb.ListPopularItemsRequest(catalog="films", limit=3))
        assert all(i.score == 0 for i in popular.items)
        books = await stub.GetCollectionInfo(pb.GetCollectionInfoRequest(catalog="books"))
        films = await stub.GetCollectionInfo(pb.GetCollectionInfoRequest(catalog="films"))
        default = await stub.GetCollectionInfo(pb.GetCollectionInfoRequest())
        assert (books.items, books.users, films.items, films.users, default.items) == (4, 1, 3, 0, 0)
        # Deleting in one catalog leaves the other alone.
        assert (await stub.DeleteItems(pb.DeleteItemsRequest(catalog="films", item_ids=["item-1"]))).deleted == 1
        assert (await stub.GetItems(pb.GetItemsRequest(catalog="books", item_ids=["item-1"]))).items
        # Impressions as well.
        impression = pb.Impression(recommendation_id="r1", page=1, user_id="u1", item_ids=["item-1"])
        await stub.RecordImpression(pb.RecordImpressionRequest(catalog="books", impression=impression))
        code, _ = await _code(stub.GetImpressions(pb.GetImpressionsRequest(catalog="films", recommendation_id="r1")))
        assert code == grpc.StatusCode.NOT_FOUND
    if backend is _edge:
        assert sorted(p.name for p in (tmp_path / "catalogs").iterdir()) == ["books", "films"]
        assert {"feedback", "items", "users"} <= {p.name for p in (tmp_path / "catalogs" / "books").iterdir()}


@pytest.mark.parametrize("name", ["Books", "-books", "_x", "a" * 65, "a.b", "a/b", "../x", "bök", "a b"])
async def test_catalog_names_are_checked(tmp_path: Path, name: str) -> None:
    async with running(tmp_path) as stub:
        for call in (
            stub.UpsertItems(pb.UpsertItemsRequest(catalog=name, items=_items("x", 1))),
            stub.GetItems(pb.GetItemsRequest(catalog=name, item_ids=["item-0"])),
            stub.GetCollectionInfo(pb.GetCollectionInfoRequest(catalog=name)),
            stub.ListImpressions(pb.ListImpressionsRequest(catalog=name, limit=1)),
        ):
            code, details = await _code(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit" in details
    assert not (tmp_path / "catalogs").exists()


async def test_longest_name_and_digits_are_fine(tmp_path: Path) -> None:
    async with running(tmp_path) as stub:
        for name in ("a" * 64, "0-tenant_1"):
            await stub.UpsertItems(pb.UpsertItemsRequest(catalog=name, items=_items("x", 1)))
            info = await stub.GetCollectionInfo(pb.GetCollectionInfoRequest(catalog=name))
            assert info.items == 1


async def test_calls_on_an_unwritten_catalog_are_not_found_and_create_nothing(tmp_path: Path) -> None:
    async with running(tmp_path) as stub:
        c = "ghost"
        query = pb.SearchQuery(vector=_vector(1), limit=5)
        event = pb.UserEvent(item_id="x", event_type="view", timestamp=1.0, weight=1.0)
        for call in (
            stub.SearchItems(pb.SearchItemsRequest(catalog=c, queries=[query])),
            stub.ListPopularItems(pb.ListPopularItemsRequest(catalog=c, limit=5)),
            stub.GetItems(pb.GetItemsRequest(catalog=c, item_ids=["x"], skip_missing=True)),
            stub.DeleteItems(pb.DeleteItemsRequest(catalog=c, item_ids=["x"])),
            stub.GetCollectionInfo(pb.GetCollectionInfoRequest(catalog=c)),
            stub.ListImpressions(pb.ListImpressionsRequest(catalog=c, limit=10)),
            stub.RecommendItems(pb.RecommendItemsRequest(catalog=c, positive_ids=["x"], limit=3)),
            stub.GetUserProfile(pb.GetUserProfileRequest(catalog=c, user_id="u")),
            stub.DeleteUser(pb.DeleteUserRequest(catalog=c, user_id="u")),
            stub.AppendUserEvents(pb.AppendUserEventsRequest(catalog=c, user_id="u", events=[event])),
            stub.GetImpressions(pb.GetImpressionsRequest(catalog=c, recommendation_id="r")),
        ):
            code, details = await _code(call)
            assert code == grpc.StatusCode.NOT_FOUND and "catalog 'ghost' does not exist" in details, details
        # Bad input is still bad input, and a rejected write creates nothing either.
        code, _ = await _code(stub.GetItems(pb.GetItemsRequest(catalog="Ghost", item_ids=["x"])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        code, _ = await _code(stub.UpsertItems(pb.UpsertItemsRequest(catalog=c)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        bad = pb.Impression(recommendation_id="", page=1)
        code, _ = await _code(stub.RecordImpression(pb.RecordImpressionRequest(catalog=c, impression=bad)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert not (tmp_path / "catalogs").exists()


async def test_max_catalogs(tmp_path: Path) -> None:
    async with running(tmp_path, max_catalogs=2) as stub:
        await stub.UpsertItems(pb.UpsertItemsRequest(catalog="one", items=_items("x", 1)))
        impression = pb.Impression(recommendation_id="r", page=1, item_ids=["item-0"])
        await stub.RecordImpression(pb.RecordImpressionRequest(catalog="two", impression=impression))
        for call in (
            stub.UpsertItems(pb.UpsertItemsRequest(catalog="three", items=_items("x", 1))),
            stub.RecordImpression(pb.RecordImpressionRequest(catalog="three", impression=impression)),
        ):
            code, details = await _code(call)
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "RETRIEVER_MAX_CATALOGS" in details
        # Existing catalogs and the default still take writes; the refused one does not exist.
        await stub.UpsertItems(pb.UpsertItemsRequest(catalog="one", items=_items("x", 2)))
        await stub.UpsertItems(pb.UpsertItemsRequest(items=_items("x", 1)))
        code, _ = await _code(stub.GetCollectionInfo(pb.GetCollectionInfoRequest(catalog="three")))
        assert code == grpc.StatusCode.NOT_FOUND
    assert sorted(p.name for p in (tmp_path / "catalogs").iterdir()) == ["one", "two"]
    # After a restart the existing catalogs still count.
    async with running(tmp_path, max_catalogs=2) as stub:
        code, _ = await _code(stub.UpsertItems(pb.UpsertItemsRequest(catalog="three", items=_items("x", 1))))
        assert code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("backend", [_edge, _client], ids=["edge", "client"])
async def test_catalogs_reopen_after_restart(
    tmp_path: Path, backend: Callable[[RetrieverSettings], VectorStore]
) -> None:
    async with running(tmp_path, backend) as stub:
        await stub.UpsertItems(pb.UpsertItemsRequest(catalog="books", items=_items("book", 3)))
        await stub.UpsertItems(pb.UpsertItemsRequest(items=_items("default", 2)))
        impression = pb.Impression(recommendation_id="r1", page=1, user_id="u1", item_ids=["item-0"])
        await stub.RecordImpression(pb.RecordImpressionRequest(catalog="books", impression=impression))
    async with running(tmp_path, backend) as stub:
        assert (await stub.GetCollectionInfo(pb.GetCollectionInfoRequest(catalog="books"))).items == 3
        assert (await stub.GetCollectionInfo(pb.GetCollectionInfoRequest())).items == 2
        got = await stub.GetItems(pb.GetItemsRequest(catalog="books", item_ids=["item-2"]))
        assert got.items[0].payload["title"] == "book 2"
        (shown,) = (
            await stub.GetImpressions(pb.GetImpressionsRequest(catalog="books", recommendation_id="r1"))
        ).impressions
        assert list(shown.item_ids) == ["item-0"]
        profile = (await stub.GetUserProfile(pb.GetUserProfileRequest(catalog="books", user_id="u1"))).profile
        assert dict(profile.shown_counts) == {"item-0": 1}


async def test_an_unindexed_tail_is_built_once_writes_stop(tmp_path: Path) -> None:
    """Items below the count that starts a build after writes are indexed once writes have stopped for
    RETRIEVER_INDEX_IDLE_S, in the default catalog and in named ones; a tail shorter than
    RETRIEVER_INDEX_IDLE_MIN_UNINDEXED is left to exact search."""
    overrides = {"index_min_unindexed": 100_000, "index_idle_s": 1.0, "index_idle_min_unindexed": 8}
    async with running(tmp_path, **overrides) as stub:
        # The engine indexes a segment from 1 KB of vectors: 32 items of 8 floats.
        for catalog, tag, count, seed in (("", "tail", 60, 0), ("books", "book", 40, 100), ("films", "film", 5, 200)):
            items = _items(tag, count, seed)
            for start in range(0, count, 20):
                await stub.UpsertItems(pb.UpsertItemsRequest(catalog=catalog, items=items[start : start + 20]))

        async def indexed(catalog: str) -> int:
            info = await stub.GetCollectionInfo(pb.GetCollectionInfoRequest(catalog=catalog))
            return int(info.indexed_vectors)

        assert (await indexed(""), await indexed("books")) == (0, 0)  # writes just happened
        deadline = asyncio.get_running_loop().time() + 120
        while (await indexed(""), await indexed("books")) != (60, 40):
            assert asyncio.get_running_loop().time() < deadline, "the idle build did not index the tail"
            await asyncio.sleep(0.2)
        assert await indexed("films") == 0  # 5 < 8: not worth a build
        found = await stub.SearchItems(pb.SearchItemsRequest(queries=[pb.SearchQuery(vector=_vector(3), limit=1)]))
        assert found.results[0].items[0].item_id == "item-3"
