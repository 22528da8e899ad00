"""One suite for both VectorStore backends: qdrant-edge (in a tmp folder) and qdrant-client (local mode)."""

from __future__ import annotations

import copy
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from services.common.errors import FailedPreconditionError, InvalidArgumentError
from services.retriever import client_store, feedback
from services.retriever.client_store import ClientVectorStore
from services.retriever.edge_store import EdgeVectorStore
from services.retriever.store import (
    DEFAULT_SCHEMA,
    ITEM_TEXT_FIELD,
    DimensionMismatchError,
    EncoderMismatchError,
    EncoderState,
    Filter,
    Impression,
    InvalidFilterError,
    InvalidVectorError,
    Item,
    NotFoundError,
    SearchQuery,
    UserEvent,
    VectorStore,
)

DIM = 8
Factory = Callable[..., VectorStore]


def unit(v: Any) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def basis(i: int, dim: int = DIM) -> tuple[float, ...]:
    v = [0.0] * dim
    v[i % dim] = 1.0
    return tuple(v)


def make_catalogue(n: int = 40, seed: int = 0) -> list[Item]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        items.append(
            Item(
                item_id=f"item-{i}",
                vector=tuple(float(x) for x in rng.normal(size=DIM)),
                payload={
                    "title": f"Item {i}",
                    "categories": ["shoes", "sale"] if i % 3 == 0 else ["shirts"],
                    "brand": "acme" if i % 2 == 0 else "globex",
                    "price": float(i),
                    "rating": 1.0 + (i % 5),
                    "in_stock": i % 4 != 0,
                },
            )
        )
    return items


def exact_ranking(items: list[Item], query: Any) -> list[str]:
    q = unit(query)
    scored = [(float(unit(it.vector) @ q), it.item_id) for it in items]
    return [i for _, i in sorted(scored, key=lambda t: -t[0])]


# Set to run the same suite against a real Qdrant server or cluster (collections are made and dropped per test).
QDRANT_URL = os.environ.get("RECSYS_TEST_QDRANT_URL", "")
SERVER = pytest.param(
    "server",
    marks=[
        pytest.mark.qdrant_server,
        pytest.mark.skipif(not QDRANT_URL, reason="set RECSYS_TEST_QDRANT_URL to test against a Qdrant server"),
    ],
)


@pytest.fixture(params=["edge", "client", SERVER])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def factory(backend: str, tmp_path: Path) -> Iterator[Factory]:
    """Opens a store on the same location each call (to test persistence); closes them all at the end."""
    opened: list[VectorStore] = []

    def open_store(**kwargs: Any) -> VectorStore:
        store: VectorStore
        if backend == "edge":
            store = EdgeVectorStore(tmp_path / "edge", DIM, **kwargs)
        elif backend == "client":
            store = ClientVectorStore.local(tmp_path / "client", dimension=DIM, **kwargs)
        else:
            names = {
                "items_collection": f"{suffix}_items",
                "users_collection": f"{suffix}_users",
                "feedback_collection": f"{suffix}_feedback",
                "events_collection": f"{suffix}_events",
            }
            store = ClientVectorStore.from_url(QDRANT_URL, dimension=DIM, **names, **kwargs)
        opened.append(store)
        return store

    suffix = f"test_{uuid.uuid4().hex[:12]}"
    yield open_store
    for store in opened:
        store.close()
    if backend == "server":
        client = QdrantClient(url=QDRANT_URL)
        for kind in ("items", "users", "feedback", "events"):
            client.delete_collection(f"{suffix}_{kind}")
        client.close()


@pytest.fixture
def store(factory: Factory) -> VectorStore:
    return factory()


@pytest.fixture
def catalogue(store: VectorStore) -> list[Item]:
    items = make_catalogue()
    assert store.upsert_items(items) == len(items)
    return items


# -- items -------------------------------------------------------------------------------------------------


def test_upsert_get_delete(store: VectorStore) -> None:
    items = make_catalogue(5)
    assert store.upsert_items(items) == 5
    assert store.count_items() == 5
    got = store.get_items(["item-3", "item-1"], with_vectors=True)
    assert [g.item_id for g in got] == ["item-3", "item-1"]
    assert got[0].payload["title"] == "Item 3"
    assert got[0].payload["categories"] == ["shoes", "sale"]
    assert got[0].payload["popularity"] == 0
    assert "item_id" not in got[0].payload
    assert got[0].vector is not None
    assert np.allclose(unit(got[0].vector), unit(items[3].vector), atol=1e-5)
    assert store.get_items(["item-2"])[0].vector is None
    assert store.delete_items(["item-1", "item-2", "nope"]) == 2
    assert store.count_items() == 3
    with pytest.raises(NotFoundError):
        store.get_items(["item-1"])


def test_not_found_names_missing_ids(store: VectorStore) -> None:
    store.upsert_items(make_catalogue(3))
    with pytest.raises(NotFoundError) as err:
        store.get_items(["item-0", "ghost-a", "ghost-b"])
    assert "ghost-a" in str(err.value) and "ghost-b" in str(err.value)
    assert "item-0" not in str(err.value)
    found = store.get_items(["ghost-a", "item-2", "item-0"], skip_missing=True)
    assert [item.item_id for item in found] == ["item-2", "item-0"]


def test_rejects_bad_vectors(store: VectorStore) -> None:
    with pytest.raises(DimensionMismatchError, match="dimension is 8"):
        store.upsert_items([Item("a", (1.0, 2.0), {})])
    with pytest.raises(InvalidVectorError, match="non-finite"):
        store.upsert_items([Item("a", (math.nan, *basis(0)[1:]), {})])
    with pytest.raises(InvalidVectorError):
        store.upsert_items([Item("a", None, {})])
    with pytest.raises(DimensionMismatchError):
        store.search([SearchQuery(vector=[1.0] * 3, limit=3)])
    with pytest.raises(InvalidVectorError):
        store.search([SearchQuery(vector=[math.inf] * DIM, limit=3)])
    with pytest.raises(ValueError, match="price"):
        store.upsert_items([Item("a", basis(0), {"price": "cheap"})])
    assert store.count_items() == 0


def test_popularity_is_kept_on_reupsert(store: VectorStore, catalogue: list[Item]) -> None:
    store.append_user_events("u", [UserEvent("item-5", "view", 1.0, 1.0), UserEvent("item-5", "purchase", 2.0, 1.0)])
    assert store.get_items(["item-5"])[0].payload["popularity"] == 2
    item = catalogue[5]
    store.upsert_items([Item(item.item_id, item.vector, {**item.payload, "title": "new", "popularity": 99})])
    got = store.get_items(["item-5"])[0]
    assert got.payload["title"] == "new"
    assert got.payload["popularity"] == 2


# -- search ------------------------------------------------------------------------------------------------


def test_search_orders_by_cosine(store: VectorStore, catalogue: list[Item]) -> None:
    rng = np.random.default_rng(1)
    queries = [rng.normal(size=DIM) for _ in range(3)]
    results = store.search([SearchQuery(vector=list(q), limit=5) for q in queries])
    assert len(results) == 3
    for q, hits in zip(queries, results, strict=True):
        assert [h.item_id for h in hits] == exact_ranking(catalogue, q)[:5]
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        best = next(it for it in catalogue if it.item_id == hits[0].item_id)
        assert hits[0].score == pytest.approx(float(unit(best.vector) @ unit(q)), abs=1e-4)
        assert hits[0].vector is None
    with_vec = store.search([SearchQuery(vector=list(queries[0]), limit=1, with_vectors=True)])[0][0]
    assert with_vec.vector is not None and len(with_vec.vector) == DIM


def test_search_results_carry_each_item_s_current_vector(store: VectorStore, catalogue: list[Item]) -> None:
    """A vector read once (the embedded engine keeps it as float32) still follows an upsert and a delete."""
    first = catalogue[0]
    query = SearchQuery(vector=list(first.vector or ()), limit=3, with_vectors=True)
    hit = store.search([query])[0][0]
    assert hit.item_id == first.item_id and hit.vector is not None
    assert hit.vector.dtype == np.float32 and np.allclose(unit(hit.vector), unit(first.vector), atol=1e-6)
    moved = basis(7)
    store.upsert_items([Item(first.item_id, moved, first.payload)])
    again = store.search([SearchQuery(vector=list(moved), limit=1, with_vectors=True)])[0][0]
    assert again.item_id == first.item_id and again.vector is not None
    assert np.allclose(unit(again.vector), unit(moved), atol=1e-6)
    store.delete_items([first.item_id])
    hits = store.search([SearchQuery(vector=list(moved), limit=len(catalogue), with_vectors=True)])[0]
    assert first.item_id not in {h.item_id for h in hits}
    assert all(h.vector is not None and len(h.vector) == DIM for h in hits)


def test_search_results_carry_each_item_s_current_payload(store: VectorStore, catalogue: list[Item]) -> None:
    """A payload read once (the embedded engine keeps it decoded) still follows an upsert and a popularity change."""
    first = catalogue[0]
    query = SearchQuery(vector=list(first.vector or ()), limit=1)
    assert store.search([query])[0][0].payload["title"] == first.payload["title"]
    store.upsert_items([Item(first.item_id, first.vector, {**first.payload, "title": "renamed"})])
    hit = store.search([query])[0][0]
    assert (hit.payload["title"], hit.payload["popularity"]) == ("renamed", 0)
    store.append_user_events("u", [UserEvent(first.item_id, "view", 10.0)])
    assert store.search([query])[0][0].payload["popularity"] == 1


def test_edge_item_cache_smaller_than_the_results_stays_exact(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "edge", DIM, item_cache_items=3)
    try:
        items = make_catalogue(12)
        store.upsert_items(items)
        by_id = {item.item_id: item for item in items}
        for item in items[:4]:
            hits = store.search([SearchQuery(vector=list(item.vector or ()), limit=10, with_vectors=True)])[0]
            assert len(hits) == 10
            for hit in hits:
                assert hit.vector is not None
                assert np.allclose(unit(hit.vector), unit(by_id[hit.item_id].vector), atol=1e-6)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("flt", "check"),
    [
        (Filter(categories_any=("shoes",)), lambda p: "shoes" in p["categories"]),
        (Filter(keywords={"brand": ("globex",)}), lambda p: p["brand"] == "globex"),
        (Filter(ranges={"price": (10.0, 20.0)}), lambda p: 10.0 <= p["price"] <= 20.0),
        (Filter(ranges={"rating": (None, 2.0)}), lambda p: p["rating"] <= 2.0),
        (Filter(flags={"in_stock": False}), lambda p: p["in_stock"] is False),
        (
            Filter(categories_any=("shirts",), keywords={"brand": ("acme",)}, flags={"in_stock": True}),
            lambda p: "shirts" in p["categories"] and p["brand"] == "acme" and p["in_stock"],
        ),
    ],
)
def test_filters(store: VectorStore, catalogue: list[Item], flt: Filter, check: Callable[[Any], bool]) -> None:
    expected = {it.item_id for it in catalogue if check(it.payload)}
    assert expected
    hits = store.search([SearchQuery(vector=[1.0] * DIM, limit=100, filter=flt)])[0]
    assert {h.item_id for h in hits} == expected
    assert all(check(h.payload) for h in hits)
    assert {h.item_id for h in store.popular(limit=100, filter=flt)} == expected


def test_invalid_filters(store: VectorStore, catalogue: list[Item]) -> None:
    def search(flt: Filter) -> None:
        store.search([SearchQuery(vector=[1.0] * DIM, limit=3, filter=flt)])

    with pytest.raises(InvalidFilterError) as err:
        search(Filter(keywords={"colour": ("red",)}))
    message = str(err.value)
    assert "colour" in message
    for name in DEFAULT_SCHEMA:
        assert name in message
    with pytest.raises(InvalidFilterError, match="range"):
        search(Filter(ranges={"brand": (1.0, 2.0)}))
    with pytest.raises(InvalidFilterError, match="keyword filter on 'price'"):
        search(Filter(keywords={"price": ("1",)}))
    with pytest.raises(InvalidFilterError, match="bool"):
        search(Filter(flags={"brand": True}))
    with pytest.raises(InvalidFilterError, match="finite"):
        search(Filter(ranges={"price": (math.nan, 2.0)}))
    with pytest.raises(InvalidFilterError, match="above"):
        search(Filter(ranges={"price": (5.0, 2.0)}))
    with pytest.raises(InvalidFilterError):
        store.popular(limit=3, filter=Filter(flags={"ghost": True}))


def test_exclude_ids_and_offset_paging(store: VectorStore, catalogue: list[Item]) -> None:
    query = [0.3] * DIM
    ranking = exact_ranking(catalogue, query)
    hits = store.search([SearchQuery(vector=query, limit=5, exclude_ids=ranking[:2])])[0]
    assert [h.item_id for h in hits] == ranking[2:7]
    pages = [store.search([SearchQuery(vector=query, limit=7, offset=o)])[0] for o in range(0, 40, 7)]
    seen = [h.item_id for page in pages for h in page]
    assert len(seen) == len(set(seen)) == 40
    assert seen == ranking


def test_only_ids_restricts_results_within_filter_and_exclusions(store: VectorStore, catalogue: list[Item]) -> None:
    query = [0.3] * DIM
    ranking = exact_ranking(catalogue, query)
    allowed = [ranking[-1], ranking[-5], ranking[-9], "item-999"]  # far items, and one that does not exist
    hits = store.search([SearchQuery(vector=query, limit=10, only_ids=allowed)])[0]
    assert [h.item_id for h in hits] == [ranking[-9], ranking[-5], ranking[-1]]  # nearest first, unknown skipped
    shirts = [i for i in allowed[:3] if "shirts" in store.get_items([i])[0].payload["categories"]]
    filtered = store.search(
        [SearchQuery(vector=query, limit=10, only_ids=allowed, filter=Filter(categories_any=("shirts",)))]
    )[0]
    assert sorted(h.item_id for h in filtered) == sorted(shirts)
    excluded = store.search([SearchQuery(vector=query, limit=10, only_ids=allowed, exclude_ids=[ranking[-5]])])[0]
    assert [h.item_id for h in excluded] == [ranking[-9], ranking[-1]]


# -- recommend, popular ------------------------------------------------------------------------------------


def test_recommend_positive_negative(store: VectorStore) -> None:
    items = [
        Item("pos", unit([1, 0.1, 0, 0, 0, 0, 0, 0]).tolist(), {}),
        Item("near-pos", unit([1, 0.2, 0, 0, 0, 0, 0, 0]).tolist(), {}),
        Item("neg", unit([0, 0, 1, 0.1, 0, 0, 0, 0]).tolist(), {}),
        Item("near-neg", unit([0.5, 0, 1, 0.2, 0, 0, 0, 0]).tolist(), {}),
        Item("far", unit([0, 0, 0, 0, 0, 0, 1, 0]).tolist(), {}),
    ]
    store.upsert_items(items)
    hits = store.recommend(["pos"], ["neg"], limit=5)
    ids = [h.item_id for h in hits]
    assert "pos" not in ids and "neg" not in ids
    assert ids[0] == "near-pos"
    assert ids.index("near-neg") > ids.index("far") or hits[ids.index("near-neg")].score < 0
    excluded = [h.item_id for h in store.recommend(["pos"], limit=5, exclude_ids=["near-pos"])]
    assert "near-pos" not in excluded and "pos" not in excluded
    assert excluded[0] == "near-neg"
    with pytest.raises(NotFoundError, match="ghost"):
        store.recommend(["pos", "ghost"], limit=3)
    with pytest.raises(ValueError):
        store.recommend([], [], limit=3)


def test_popular_after_events(store: VectorStore, catalogue: list[Item]) -> None:
    events = [UserEvent(f"item-{i}", "view", float(n), 1.0) for i in (7, 3, 9) for n in range({7: 3, 3: 1, 9: 2}[i])]
    store.append_user_events("alice", events)
    top = store.popular(limit=3)
    assert [t.item_id for t in top] == ["item-7", "item-9", "item-3"]
    assert [t.score for t in top] == [3.0, 2.0, 1.0]
    assert [t.item_id for t in store.popular(limit=2, offset=1)] == ["item-9", "item-3"]
    assert [t.item_id for t in store.popular(limit=2, exclude_ids=["item-7"])] == ["item-9", "item-3"]
    assert store.get_items(["item-7"])[0].payload["popularity"] == 3


# -- users -------------------------------------------------------------------------------------------------


def test_unknown_event_item_writes_nothing(store: VectorStore, catalogue: list[Item]) -> None:
    with pytest.raises(NotFoundError, match="ghost"):
        store.append_user_events("bob", [UserEvent("item-1", "view", 1.0, 1.0), UserEvent("ghost", "view", 2.0, 1.0)])
    assert store.count_users() == 0
    assert store.get_items(["item-1"])[0].payload["popularity"] == 0
    with pytest.raises(NotFoundError, match="bob"):
        store.get_user("bob")


def test_profile_moves_toward_recent_items(factory: Factory) -> None:
    store = factory(half_life_events=2.0)
    store.upsert_items([Item("a", basis(0), {}), Item("b", basis(1), {})])
    first = store.append_user_events("u", [UserEvent("a", "view", float(t), 1.0) for t in range(3)])
    assert first.vector is not None
    assert np.allclose(first.vector, basis(0), atol=1e-5)
    later = store.append_user_events("u", [UserEvent("b", "view", float(t), 1.0) for t in range(10, 13)])
    assert later.vector is not None
    assert later.vector[1] > later.vector[0] > 0
    assert np.linalg.norm(later.vector) == pytest.approx(1.0, abs=1e-5)
    stored = store.get_user("u")
    assert [e.timestamp for e in stored.events] == [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]
    assert stored.vector is not None and np.allclose(stored.vector, later.vector, atol=1e-5)


def test_history_cap(factory: Factory) -> None:
    store = factory(max_history=5)
    store.upsert_items([Item("a", basis(0), {})])
    store.append_user_events("u", [UserEvent("a", "view", float(t), 1.0) for t in range(4)])
    profile = store.append_user_events("u", [UserEvent("a", "click", float(t), 1.0) for t in range(4, 8)])
    assert [e.timestamp for e in profile.events] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert store.get_user("u").events == profile.events
    assert store.get_items(["a"])[0].payload["popularity"] == 8


def test_get_and_delete_user(store: VectorStore, catalogue: list[Item]) -> None:
    store.append_user_events("carol", [UserEvent("item-2", "purchase", 5.0, 2.0)])
    assert store.count_users() == 1
    profile = store.get_user("carol")
    assert [(e.item_id, e.event_type, e.timestamp, e.weight) for e in profile.events] == [
        ("item-2", "purchase", 5.0, 2.0)
    ]
    store.delete_user("carol")
    assert store.count_users() == 0
    with pytest.raises(NotFoundError, match="carol"):
        store.delete_user("carol")
    with pytest.raises(NotFoundError):
        store.get_user("carol")


# -- persistence, info -------------------------------------------------------------------------------------


def test_persistence_across_reopen(factory: Factory) -> None:
    store = factory()
    items = make_catalogue(10)
    store.upsert_items(items)
    store.append_user_events("dave", [UserEvent("item-4", "view", 1.0, 1.0)])
    store.delete_items(["item-9"])
    store.close()
    reopened = factory()
    assert reopened.count_items() == 9
    assert reopened.count_users() == 1
    assert reopened.get_user("dave").events[0].item_id == "item-4"
    assert reopened.get_items(["item-4"])[0].payload["popularity"] == 1
    hits = reopened.search([SearchQuery(vector=list(items[0].vector or ()), limit=1)])[0]
    assert hits[0].item_id == "item-0"


def test_info(store: VectorStore, catalogue: list[Item]) -> None:
    store.append_user_events("erin", [UserEvent("item-1", "view", 1.0, 1.0)])
    info = store.info()
    assert info.items == len(catalogue)
    assert info.users == 1
    assert info.dimension == DIM
    assert info.distance == "cosine"
    assert set(DEFAULT_SCHEMA) | {"item_id"} <= set(info.payload_indexes)
    assert info.backend


def test_concurrent_events_are_atomic(store: VectorStore, catalogue: list[Item]) -> None:
    def worker(n: int) -> None:
        for k in range(10):
            store.append_user_events(f"user-{n}", [UserEvent("item-0", "view", float(k), 1.0)])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_items(["item-0"])[0].payload["popularity"] == 40
    assert store.count_users() == 4


# -- the edge backend's background index build -------------------------------------------------------------


def test_edge_background_index_build(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "edge", 16, full_scan_threshold_kb=10)
    try:
        rng = np.random.default_rng(7)
        vectors = rng.normal(size=(2000, 16))
        items = [Item(f"i{i}", tuple(map(float, v)), {"categories": ["c"]}) for i, v in enumerate(vectors)]
        store.upsert_items(items)
        queries = rng.normal(size=(20, 16))
        assert not store.index_ready

        def check_recall(min_recall: float) -> None:
            live = {it.item_id: it for it in items}
            current = list(live.values())
            results = store.search([SearchQuery(vector=list(q), limit=10) for q in queries])
            total = 0
            for q, hits in zip(queries, results, strict=True):
                total += len({h.item_id for h in hits} & set(exact_ranking(current, q)[:10]))
            assert total / (10 * len(queries)) >= min_recall

        assert store.start_index_build()
        assert not store.start_index_build()  # one at a time
        check_recall(1.0)  # exact while the build runs
        # Writes during the build (after the copy was taken): new items, a deletion, a popularity update.
        deadline = time.monotonic() + 30
        while store.index_build_phase in ("idle", "copying") and time.monotonic() < deadline:
            time.sleep(0.005)
        assert store.index_build_phase in ("optimizing", "installing")
        extra = [Item(f"new{i}", tuple(map(float, rng.normal(size=16))), {}) for i in range(5)]
        store.upsert_items(extra)
        store.delete_items(["i0"])
        store.append_user_events("u", [UserEvent("i1", "view", 1.0, 1.0)])
        deadline = time.monotonic() + 120
        while not store.index_ready and time.monotonic() < deadline:
            check_recall(0.9)
            time.sleep(0.05)
        assert store.index_ready, store.last_index_error
        assert store.last_index_error is None
        info = store.info()
        assert info.indexed_vectors > 0
        assert info.items == 2004
        assert store.count_items() == 2004
        assert {i.item_id for i in store.get_items([e.item_id for e in extra])} == {e.item_id for e in extra}
        with pytest.raises(NotFoundError):
            store.get_items(["i0"])
        assert store.get_items(["i1"])[0].payload["popularity"] == 1
        items = [it for it in items if it.item_id != "i0"] + extra
        check_recall(0.9)
        hit = store.search([SearchQuery(vector=list(extra[0].vector or ()), limit=1)])[0][0]
        assert hit.item_id == "new0"
    finally:
        store.close()
    reopened = EdgeVectorStore(tmp_path / "edge", 16)
    try:
        assert reopened.count_items() == 2004
        assert reopened.index_ready
        folders = sorted(p.name for p in (tmp_path / "edge").iterdir())
        assert folders == ["encoders.json", "events", "feedback", "items", "items.2", "users"]
        assert (tmp_path / "edge" / "items").resolve().name == "items.2"
    finally:
        reopened.close()


def test_edge_builds_again_when_writes_during_a_build_stay_unindexed(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "edge", 16, full_scan_threshold_kb=10, rebuild_unindexed=3)
    try:
        rng = np.random.default_rng(8)
        store.upsert_items([Item(f"i{i}", tuple(map(float, rng.normal(size=16))), {}) for i in range(2000)])
        assert store.start_index_build()
        deadline = time.monotonic() + 30
        while store.index_build_phase in ("idle", "copying") and time.monotonic() < deadline:
            time.sleep(0.005)
        store.upsert_items([Item(f"new{i}", tuple(map(float, rng.normal(size=16))), {}) for i in range(5)])
        assert store.wait_for_index(240), store.last_index_error
        # The five written during the first build were indexed by a second one, which nothing else started.
        assert store.index_ready and store.index_builds_completed == 2
    finally:
        store.close()


def test_edge_rejects_other_dimension_on_reopen(tmp_path: Path) -> None:
    EdgeVectorStore(tmp_path / "edge", DIM).close()
    with pytest.raises(DimensionMismatchError):
        EdgeVectorStore(tmp_path / "edge", DIM * 2)


def test_client_rejects_other_dimension(tmp_path: Path) -> None:
    ClientVectorStore.local(tmp_path / "c", dimension=DIM).close()
    with pytest.raises(DimensionMismatchError):
        ClientVectorStore.local(tmp_path / "c", dimension=DIM * 2)


WRITES = {"upsert", "delete", "batch_update_points"}
Call = tuple[str, str, dict[str, Any]]


def _recorded(calls: list[Call], name: str, call: Callable[..., Any]) -> Callable[..., Any]:
    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append((name, str(args[0] if args else kwargs["collection_name"]), kwargs))
        return call(*args, **kwargs)

    return recording


def test_client_asks_a_cluster_for_ordered_writes_and_consistent_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the event log relies on from a replicated cluster (docs/reliability.md). Local mode accepts and
    ignores these options, so the test records what the store asks of the client."""
    client = QdrantClient(location=":memory:", force_disable_check_same_thread=True)
    calls: list[Call] = []
    for name in ("create_collection", *WRITES, "retrieve", "scroll", "facet"):
        monkeypatch.setattr(client, name, _recorded(calls, name, getattr(client, name)))
    store = ClientVectorStore(client, dimension=DIM, shard_number=2, replication_factor=2)
    store.upsert_items(make_catalogue(4))
    store.record_impressions([_impression("r1", 1, "u", ["item-1", "item-2"], "exp", "a")])
    store.append_user_events("u", [UserEvent("item-1", "purchase", 10.0, recommendation_id="r1")])
    store.get_user("u")
    store.get_impressions("r1")
    store.list_impressions("exp", 10, "")
    store.delete_user("u")
    store.delete_items(["item-3"])
    created = {collection: kwargs for name, collection, kwargs in calls if name == "create_collection"}
    assert sorted(created) == ["events", "feedback", "items", "users"]
    assert all(kwargs["write_consistency_factor"] == 2 for kwargs in created.values())
    writes = [(name, collection, kwargs.get("ordering")) for name, collection, kwargs in calls if name in WRITES]
    assert {name for name, _, _ in writes} == WRITES
    assert [w for w in writes if w[2] is not models.WriteOrdering.STRONG] == []
    log_reads = [
        (name, collection, kwargs.get("consistency"))
        for name, collection, kwargs in calls
        if name in ("retrieve", "scroll", "facet") and collection != "items"
    ]
    assert {name for name, _, _ in log_reads} == {"retrieve", "scroll", "facet"}
    assert [r for r in log_reads if r[2] is not models.ReadConsistencyType.MAJORITY] == []
    client.close()


# -- feedback log: impressions, attribution, shown counts --------------------------------------------------


def _impression(rid: str, page: int, user: str, items: list[str], experiment: str = "", arm: str = "") -> Impression:
    return Impression(rid, page, user, tuple(items), experiment=experiment, arm=arm, timestamp=100.0 + page)


def test_impressions_record_get_and_replace(store: VectorStore, catalogue: list[Item]) -> None:
    store.record_impressions([_impression("r1", 2, "u1", ["item-3", "item-4"])])
    store.record_impressions([_impression("r1", 1, "u1", ["item-1", "item-2"], "exp", "a")])
    got = store.get_impressions("r1")
    assert [(i.page, i.item_ids) for i in got] == [(1, ("item-1", "item-2")), (2, ("item-3", "item-4"))]
    assert (got[0].experiment, got[0].arm, got[0].user_id, got[0].timestamp) == ("exp", "a", "u1", 101.0)
    # The same key again replaces it, and a retry counts nothing twice.
    store.record_impressions([_impression("r1", 1, "u1", ["item-1", "item-2"], "exp", "a")])
    store.record_impressions([_impression("r1", 1, "u1", ["item-1", "item-5"], "exp", "a")])
    assert store.get_impressions("r1")[0].item_ids == ("item-1", "item-5")
    # The replaced page counts as shown once, with what it shows now.
    assert dict(store.get_user("u1").shown_counts) == {"item-3": 1, "item-4": 1, "item-1": 1, "item-5": 1}
    with pytest.raises(NotFoundError, match="ghost"):
        store.get_impressions("ghost")


def test_impressions_attribution_and_shown_counts(store: VectorStore, catalogue: list[Item]) -> None:
    store.record_impressions([_impression("r1", 1, "u1", ["item-1", "item-2", "item-3"])])
    store.record_impressions([_impression("r2", 1, "u1", ["item-1", "item-4"])])
    profile = store.get_user("u1")  # a user known only from impressions: no events, no vector
    assert profile.events == () and profile.vector is None
    assert dict(profile.shown_counts) == {"item-2": 1, "item-3": 1, "item-1": 2, "item-4": 1}
    events = [  # after the pages were shown (at 101)
        UserEvent("item-2", "click", 201.0, 1.0, recommendation_id="r1"),
        UserEvent("item-3", "purchase", 202.0, 4.0, recommendation_id="r1"),
        UserEvent("item-4", "view", 203.0, 1.0, recommendation_id="r1"),  # not shown in r1: stored, not attributed
        UserEvent("item-5", "view", 204.0, 1.0, recommendation_id="unknown"),
    ]
    profile = store.append_user_events("u1", events)
    assert [e.recommendation_id for e in profile.events] == ["r1", "r1", "r1", "unknown"]
    assert profile.vector is not None
    assert dict(profile.shown_counts) == {"item-1": 2}  # an event on an item after it was shown resets its count
    assert store.unknown_recommendations(events) == ["unknown"]
    assert store.get_user("u1").shown_counts == profile.shown_counts
    (r1,) = store.get_impressions("r1")
    assert (set(r1.engaged_item_ids), r1.converted_item_ids) == ({"item-2", "item-3"}, ("item-3",))
    (r2,) = store.get_impressions("r2")
    assert r2.engaged_item_ids == () and r2.converted_item_ids == ()
    # A retry of r1 keeps its attribution; a replacement without an item drops that item's.
    store.record_impressions([_impression("r1", 1, "u1", ["item-1", "item-2", "item-3"])])
    assert set(store.get_impressions("r1")[0].engaged_item_ids) == {"item-2", "item-3"}
    store.record_impressions([_impression("r1", 1, "u1", ["item-1", "item-2"])])
    assert store.get_impressions("r1")[0].converted_item_ids == ()
    assert dict(store.get_user("u1").shown_counts) == {"item-1": 2}  # nothing counted twice


def test_list_impressions_pages_and_experiment(store: VectorStore) -> None:
    for n in range(7):
        store.record_impressions([_impression(f"r{n}", 1, "", [f"item-{n}"], "exp" if n % 2 else "other")])
    seen: list[str] = []
    token = ""
    while True:
        page, token = store.list_impressions("", 3, token)
        assert len(page) <= 3
        seen.extend(i.recommendation_id for i in page)
        if not token:
            break
    assert sorted(seen) == [f"r{n}" for n in range(7)]
    page, token = store.list_impressions("exp", 10, "")
    assert sorted(i.recommendation_id for i in page) == ["r1", "r3", "r5"] and token == ""
    assert store.list_impressions("none", 10, "") == ([], "")
    for bad in ((0, ""), (1001, ""), (10, "not-a-token")):
        with pytest.raises(InvalidArgumentError):
            store.list_impressions("", *bad)


def test_delete_user_removes_impressions(store: VectorStore, catalogue: list[Item]) -> None:
    store.record_impressions([_impression("r1", 1, "u1", ["item-1"])])
    store.record_impressions([_impression("r1", 2, "u1", ["item-2"])])
    store.record_impressions([_impression("r2", 1, "u2", ["item-1"])])
    store.append_user_events("u1", [UserEvent("item-1", "click", 1.0, recommendation_id="r1")])
    store.delete_user("u1")
    with pytest.raises(NotFoundError):
        store.get_impressions("r1")
    with pytest.raises(NotFoundError):
        store.get_user("u1")
    assert len(store.get_impressions("r2")) == 1
    assert [i.recommendation_id for i in store.list_impressions("", 100, "")[0]] == ["r2"]
    store.delete_user("u2")  # a user known only from impressions can be deleted too
    assert store.list_impressions("", 100, "") == ([], "")


@pytest.mark.parametrize(
    ("impression", "message"),
    [
        (Impression("", 1, "u", ()), "recommendation_id"),
        (Impression("x" * 129, 1, "u", ()), "recommendation_id"),
        (Impression("r", 0, "u", ()), "page"),
        (Impression("r", 1, "u", (), experiment="e" * 65), "experiment"),
        (Impression("r", 1, "u", (), arm="a" * 65), "arm"),
        (Impression("r", 1, "u", ("",)), "shown item id"),
        (Impression("r", 1, "u", (), timestamp=float("nan")), "timestamp"),
    ],
)
def test_rejects_bad_impressions(store: VectorStore, impression: Impression, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        store.record_impressions([impression])


def test_impressions_survive_reopen(factory: Factory) -> None:
    store = factory()
    store.record_impressions([_impression("r1", 1, "u1", ["a", "b"], "exp", "b")])
    store.close()
    reopened = factory()
    (got,) = reopened.get_impressions("r1")
    assert (got.item_ids, got.arm) == (("a", "b"), "b")
    assert dict(reopened.get_user("u1").shown_counts) == {"a": 1, "b": 1}


# -- exactly once, input checks, deletes racing writes (issue 16; issue 20 part 5) -------------------------


def test_an_event_id_counts_once_in_one_call_or_two(store: VectorStore, catalogue: list[Item]) -> None:
    click = UserEvent("item-1", "click", 10.0, 2.0, recommendation_id="r1", event_id="e-1")
    store.record_impressions([_impression("r1", 1, "u", ["item-1", "item-2"])])
    store.append_user_events("u", [click, click])
    profile = store.append_user_events("u", [click, UserEvent("item-2", "view", 11.0, event_id="e-2")])
    assert [e.event_id for e in profile.events] == ["e-1", "e-2"]
    assert store.append_user_events("u", [click]).events == profile.events
    assert store.get_items(["item-1"])[0].payload["popularity"] == 1
    (shown,) = store.get_impressions("r1")
    assert shown.engaged_item_ids == ("item-1",)
    # Without an id, the content names the event: the same event again is a retry.
    view = UserEvent("item-3", "view", 12.0)
    store.append_user_events("u", [view])
    store.append_user_events("u", [view])
    assert store.get_items(["item-3"])[0].payload["popularity"] == 1
    assert len(store.get_user("u").events) == 3
    # Two identical events in one call are two (two purchases at the same second); a retry of the call adds none.
    twice = [UserEvent("item-4", "purchase", 13.0), UserEvent("item-4", "purchase", 13.0)]
    store.append_user_events("u", twice)
    store.append_user_events("u", twice)
    assert store.get_items(["item-4"])[0].payload["popularity"] == 2
    assert len(store.get_user("u").events) == 5


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (UserEvent("item-1", "view", -1e12), "not Unix seconds"),
        (UserEvent("item-1", "view", 1e300), "in the future"),
        (UserEvent("item-1", "view", time.time() + 12 * 3600), r"hours in the future; times up to 300 seconds"),
        (UserEvent("item-1", "bogus", 1.0), "event_type 'bogus' is not one of view, click, add_to_cart, purchase"),
        (UserEvent("item-1", "view", 1.0, weight=-5.0), "weight is -5.0; it must be above 0"),
        (UserEvent("item-1", "view", 1.0, weight=math.nan), "finite"),
        (UserEvent("item-1", "view", 1.0, event_id="x" * 129), "event_id"),
    ],
)
def test_events_are_checked_like_the_gateway_checks_them(
    store: VectorStore, catalogue: list[Item], event: UserEvent, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        store.append_user_events("u", [event])
    assert store.count_users() == 0


def test_a_small_clock_skew_is_accepted(store: VectorStore, catalogue: list[Item]) -> None:
    profile = store.append_user_events("u", [UserEvent("item-1", "view", time.time() + 240)])
    assert len(profile.events) == 1


def test_delete_racing_writes_leaves_nothing_of_the_old_user(store: VectorStore, catalogue: list[Item]) -> None:
    before = [UserEvent(f"item-{n}", "view", float(n), event_id=f"old-{n}") for n in range(10)]
    store.append_user_events("u", before)
    store.record_impressions([_impression("r-old", 1, "u", ["item-1"])])
    written: list[UserEvent] = []

    def writer() -> None:
        for n in range(20):
            event = UserEvent(f"item-{n % 7}", "click", 100.0 + n, event_id=f"new-{n}")
            store.append_user_events("u", [event])
            written.append(event)

    thread = threading.Thread(target=writer)
    thread.start()
    store.delete_user("u")
    with pytest.raises(NotFoundError):
        store.get_impressions("r-old")
    thread.join()
    try:
        history = store.get_user("u").events
    except NotFoundError:
        history = ()
    ids = [e.event_id for e in history]
    assert not any(i.startswith("old-") for i in ids)
    assert len(ids) == len(set(ids)) and set(ids) <= {e.event_id for e in written}
    # Popularity counts exactly the events that remain.
    for n in range(10):
        expected = sum(1 for e in history if e.item_id == f"item-{n}")
        assert store.get_items([f"item-{n}"])[0].payload["popularity"] == expected
    store.append_user_events("u", [UserEvent("item-9", "purchase", 500.0, event_id="fresh")])
    assert "fresh" in [e.event_id for e in store.get_user("u").events]


# -- deterministic interleavings of two writers (issue 16 review) ------------------------------------------
# The event log's engine calls are wrapped to stop one writer at a chosen point while another runs; the
# wrapped engine is the store's own (`_log._engine`), or a copy of it for a second replica.


def _log_of(store: VectorStore) -> Any:
    return store._log  # type: ignore[attr-defined]  # both backends keep their EventLog here


def _replica(store: VectorStore, **calls: Callable[..., Any]) -> Any:
    """A second writer on the store's engine (as another replica would be), with these engine calls replaced."""
    log = copy.copy(_log_of(store))
    log._engine = copy.copy(log._engine)
    for name, call in calls.items():
        setattr(log._engine, name, call)
    return log


def _remaining(store: VectorStore, user: str) -> list[str]:
    try:
        return [e.event_id for e in store.get_user(user).events]
    except NotFoundError:
        return []


def _check_popularity_counts(store: VectorStore, user: str, items: list[str]) -> None:
    events = store.get_user(user).events if _remaining(store, user) else ()
    popularity = {i.item_id: i.payload["popularity"] for i in store.get_items(items)}
    assert popularity == {i: sum(1 for e in events if e.item_id == i) for i in items}


def test_write_while_delete_is_paused_after_its_tombstone_is_deleted(
    store: VectorStore, catalogue: list[Item], monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append_user_events("u", [UserEvent("item-1", "view", 10.0, event_id="old")])
    engine = _log_of(store)._engine
    write_user = engine.write_user
    tombstoned, resume = threading.Event(), threading.Event()

    def pausing_write_user(*args: Any) -> None:
        write_user(*args)
        if args[2].get("state") == "deleted" and not tombstoned.is_set():
            tombstoned.set()
            resume.wait(30)

    monkeypatch.setattr(engine, "write_user", pausing_write_user)
    deleter = threading.Thread(target=store.delete_user, args=("u",))
    deleter.start()
    assert tombstoned.wait(30)
    # Between the tombstone and the deletion of the events: this write counts the old event with its own.
    store.append_user_events("u", [UserEvent("item-2", "click", 20.0, event_id="racing")])
    resume.set()
    deleter.join()
    # DeleteUser has returned: the racing write landed before it (its event went with the user).
    assert _remaining(store, "u") == []
    _check_popularity_counts(store, "u", ["item-1", "item-2"])
    fresh = store.append_user_events("u", [UserEvent("item-3", "purchase", 30.0, event_id="fresh")])
    assert [e.event_id for e in fresh.events] == ["fresh"]
    assert _remaining(store, "u") == ["fresh"]


def test_write_while_delete_is_paused_before_deleting_events_lands_after_it(
    store: VectorStore, catalogue: list[Item], monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append_user_events("u", [UserEvent("item-1", "view", 10.0, event_id="old")])
    engine = _log_of(store)._engine
    delete_events = engine.delete_events
    listed, resume = threading.Event(), threading.Event()

    def pausing_delete_events(*args: Any) -> None:
        listed.set()
        resume.wait(30)
        delete_events(*args)

    monkeypatch.setattr(engine, "delete_events", pausing_delete_events)
    deleter = threading.Thread(target=store.delete_user, args=("u",))
    deleter.start()
    assert listed.wait(30)
    # After the delete listed the user's events: this write's event is not among them, so it stays.
    store.append_user_events("u", [UserEvent("item-2", "click", 20.0, event_id="racing")])
    resume.set()
    deleter.join()
    assert _remaining(store, "u") == ["racing"]  # a fresh user holding the racing event only
    _check_popularity_counts(store, "u", ["item-1", "item-2"])


def test_a_snapshot_never_replaces_one_that_saw_more_events(store: VectorStore, catalogue: list[Item]) -> None:
    """An impression writer X counts the events before an event write M and the impressions after another
    writer Y's: its snapshot saw more impressions and fewer events than M's, and must not replace it."""
    store.append_user_events("u", [UserEvent("item-1", "view", 10.0, event_id="e0")])
    store.record_impressions([Impression("r0", 1, "u", ("item-1",), timestamp=5.0)])
    engine = _log_of(store)._engine
    counting, resume = threading.Event(), threading.Event()

    def pausing_count_impressions(user_id: str) -> int:
        counting.set()
        resume.wait(30)
        return int(engine.count_impressions(user_id))

    x = _replica(store, count_impressions=pausing_count_impressions)
    writer_x = threading.Thread(
        target=x.record_impressions, args=([Impression("r1", 1, "u", ("item-1",), timestamp=20.0)],)
    )
    writer_x.start()
    assert counting.wait(30)  # X has read the snapshot and counted one event
    acknowledged = store.append_user_events("u", [UserEvent("item-2", "click", 30.0, event_id="e1")])
    assert [e.event_id for e in acknowledged.events] == ["e0", "e1"]
    y = Impression("r2", 1, "u", ("item-2",), timestamp=40.0)
    _log_of(store)._engine.upsert_impressions([(feedback.impression_point_id("r2", 1), feedback.to_payload(y))])
    resume.set()  # X counts three impressions now (Y's refresh has not run)
    writer_x.join()
    assert [e.event_id for e in store.get_user("u").events] == ["e0", "e1"]
    store.record_impressions([y])  # Y's refresh
    profile = store.get_user("u")
    assert [e.event_id for e in profile.events] == ["e0", "e1"]
    assert dict(profile.shown_counts) == {"item-1": 1, "item-2": 1}  # r1 after e0, r2 after e1


# -- encoder copies: a reindex into a staged copy, one switch, rollback ----------------------------------------


def _reembedded(items: list[Item], seed: int) -> list[Item]:
    """The same items as another encoder would embed them: other vectors, same payloads."""
    rng = np.random.default_rng(seed)
    return [Item(i.item_id, tuple(unit(rng.normal(size=DIM)).tolist()), i.payload) for i in items]


def test_a_staged_copy_switches_at_once_and_rolls_back(factory: Factory) -> None:
    store = factory()
    items = make_catalogue(12)
    store.upsert_items(items, encoder_version="")
    store.append_user_events(
        "u", [UserEvent(items[0].item_id, "purchase", 1.0), UserEvent(items[1].item_id, "view", 2.0)]
    )
    assert store.encoders() == EncoderState("")
    query = SearchQuery(vector=items[3].vector or (), limit=3, with_vectors=True)

    staged = store.stage_encoder("v2")
    assert staged == EncoderState("", "v2", 0)
    assert store.stage_encoder("v2") == staged  # staging again is a no-op
    with pytest.raises(FailedPreconditionError, match="is staged"):
        store.stage_encoder("v3")
    with pytest.raises(EncoderMismatchError, match="serves the base encoder") as refused:
        store.search([query], encoder_version="v2")
    assert refused.value.serving == ""

    again = _reembedded(items, seed=7)
    store.upsert_items(again[:-1], encoder_version="v2", staged=True)
    with pytest.raises(FailedPreconditionError, match="holds 11 items, the served one 12"):
        store.switch_encoder("v2")
    store.upsert_items(again[-1:], encoder_version="v2", staged=True)
    store.delete_items([items[5].item_id])  # reaches both copies
    store.append_user_events("w", [UserEvent(items[2].item_id, "purchase", 3.0)])  # popularity reaches both
    assert store.encoders().staged_items == 11
    served_before = store.search([query], encoder_version="")[0]

    assert store.switch_encoder("v2") == EncoderState("v2", "", 11)
    with pytest.raises(EncoderMismatchError) as stale:
        store.search([query], encoder_version="")
    assert stale.value.serving == "v2"
    new_vectors = {i.item_id: np.asarray(i.vector) for i in again}
    hits = store.search([SearchQuery(vector=again[3].vector or (), limit=3, with_vectors=True)], encoder_version="v2")
    assert hits[0][0].item_id == items[3].item_id
    for hit in hits[0]:
        np.testing.assert_allclose(hit.vector, new_vectors[hit.item_id], atol=1e-5)
    assert items[5].item_id not in {i.item_id for i in store.list_items(None, "", 100)[0]}
    assert {h.item_id: h.score for h in store.popular(limit=3)}[items[2].item_id] == 1
    # The profile computed from the base encoder's vectors is computed again from the served ones.
    profile = store.get_user("u")
    assert profile.encoder_version == "v2"
    old_vector = store.get_user("u").vector
    assert profile.vector is not None and old_vector is not None
    purchased, viewed = new_vectors[items[0].item_id], new_vectors[items[1].item_id]
    assert float(np.dot(profile.vector, unit(purchased + viewed))) > 0.9
    getattr(store, "wait_for_index", lambda: True)()  # the embedded engine indexes the switched-to copy
    # A served write after the switch is ahead of the kept copy until the kept copy takes the same item; an item
    # the served copy does not hold never enters the kept copy alone. Then rolling back serves it again, whole.
    late = {"title": "late", ITEM_TEXT_FIELD: "late text"}
    with pytest.raises(EncoderMismatchError):  # a caller that has not seen the switch is told, not written aside
        store.upsert_items([Item("late", items[0].vector, late)], encoder_version="")
    assert store.upsert_items([Item("ghost", items[0].vector, late)], encoder_version="", staged=True) == 0
    store.upsert_items([Item("late", again[0].vector, late)], encoder_version="v2")
    with pytest.raises(FailedPreconditionError, match="holds 11 items, the served one 12; 1 served items were"):
        store.switch_encoder("")
    store.upsert_items([Item("late", items[0].vector, late)], encoder_version="", staged=True)
    store.upsert_items([Item(items[1].item_id, again[1].vector, {"title": "renamed"})], encoder_version="v2")
    with pytest.raises(FailedPreconditionError, match="1 served items were written after the staged copy took"):
        store.switch_encoder("")
    store.upsert_items([Item(items[1].item_id, items[1].vector, {"title": "stale"})], encoder_version="", staged=True)
    with pytest.raises(FailedPreconditionError, match="1 served items were written after"):
        store.switch_encoder("")  # the kept copy took another payload than the served one holds: still ahead
    store.upsert_items([Item(items[1].item_id, items[1].vector, {"title": "renamed"})], encoder_version="", staged=True)
    assert store.switch_encoder("") == EncoderState("", "v2", 12)
    assert [h.item_id for h in store.search([query], encoder_version="")[0]] == [h.item_id for h in served_before]
    assert store.drop_staged_encoder("v2") == EncoderState("")
    with pytest.raises(FailedPreconditionError, match="not staged"):
        store.drop_staged_encoder("v2")


def test_the_served_encoder_survives_a_restart(factory: Factory, backend: str) -> None:
    if backend == "server":
        pytest.skip("a server keeps its aliases; this checks the embedded layouts")
    store = factory()
    items = make_catalogue(6)
    store.upsert_items(items)
    store.stage_encoder("v2")
    store.upsert_items(_reembedded(items, seed=3), encoder_version="v2", staged=True)
    store.switch_encoder("v2")
    store.close()
    reopened = factory()
    assert reopened.encoders() == EncoderState("v2", "", 6)
    assert reopened.count_items() == 6


def test_list_items_pages_through_a_copy_with_its_texts(store: VectorStore) -> None:
    items = [Item(f"i{n}", basis(n % DIM), {"title": f"t{n}", ITEM_TEXT_FIELD: f"text {n}"}) for n in range(7)]
    store.upsert_items(items)
    seen: dict[str, str] = {}
    token = ""
    while True:
        page, token = store.list_items(None, token, 3)
        assert len(page) <= 3
        seen.update({i.item_id: i.payload[ITEM_TEXT_FIELD] for i in page})
        if not token:
            break
    assert seen == {f"i{n}": f"text {n}" for n in range(7)}
    # Searches never show the text.
    hit = store.search([SearchQuery(vector=basis(0), limit=1)])[0][0]
    assert ITEM_TEXT_FIELD not in hit.payload and ITEM_TEXT_FIELD not in store.get_items(["i0"])[0].payload
    with pytest.raises(EncoderMismatchError):
        store.list_items("v9", "", 3)


def test_a_replica_that_has_not_seen_a_switch_answers_from_one_copy_and_learns_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two replicas over one Qdrant (local mode): A switches; B's view of the alias is up to ENCODER_STATE_TTL_S old,
    # here held old for the whole test, so that what B does before it reads the alias again is what is checked.
    monkeypatch.setattr(client_store, "ENCODER_STATE_TTL_S", 3600.0)
    a = ClientVectorStore.local(":memory:", dimension=DIM)
    b = ClientVectorStore(a.client, dimension=DIM)
    try:
        items = make_catalogue(8)
        a.upsert_items(items)
        query = SearchQuery(vector=items[2].vector or (), limit=2, with_vectors=True)
        assert b.search([query], encoder_version="")[0][0].item_id == items[2].item_id  # B has read the alias
        a.stage_encoder("v2")
        again = _reembedded(items, seed=5)
        a.upsert_items(again, encoder_version="v2", staged=True)
        a.switch_encoder("v2")
        # Still on its old view, B answers a request stamped with the old encoder from the old copy, whole:
        # the vectors it returns are all the old encoder's.
        old = {i.item_id: unit(i.vector) for i in items}
        for hit in b.search([query], encoder_version="")[0]:
            np.testing.assert_allclose(hit.vector, old[hit.item_id], atol=1e-5)
        # A request stamped with the new encoder makes B read the alias again instead of refusing it.
        new = {i.item_id: unit(i.vector) for i in again}
        for hit in b.search([query], encoder_version="v2")[0]:
            np.testing.assert_allclose(hit.vector, new[hit.item_id], atol=1e-5)
        with pytest.raises(EncoderMismatchError) as refused:
            b.search([query], encoder_version="")
        assert refused.value.serving == "v2"
        # Writes always read the alias: an upsert of the old encoder's vectors is refused at once.
        with pytest.raises(EncoderMismatchError):
            b.upsert_items(items[:1], encoder_version="")
    finally:
        b.close()
        a.close()
