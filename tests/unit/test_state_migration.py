"""A state folder written by the retriever before the event log (commit ca3b644: histories inside the users'
points, attribution written onto impressions, popularity as counters) opens with today's code: it is moved
into the event log at start-up, on both backends.

The fixture was written by that commit's code, DIM 8, six items, then:
    record_impression(Impression("rec-1", 1, "alice", ("item-0", "item-1", "item-2"), timestamp=50.0))
    append_user_events("alice", [UserEvent("item-0", "view", 10.0, 1.0),
                                 UserEvent("item-1", "purchase", 60.0, 4.0, "rec-1")])
    append_user_events("bob", [UserEvent("item-1", "view", 11.0, 1.0), UserEvent("item-3", "click", 12.0, 2.0)])
    record_impression(Impression("rec-2", 1, "carol", ("item-4",), timestamp=70.0))
and packed with `tar cJSf` (sparse: the engine's files are mostly preallocated zeros).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from services.retriever.client_store import ClientVectorStore
from services.retriever.edge_store import EdgeVectorStore
from services.retriever.eventlog import Version
from services.retriever.store import Impression, Item, NotFoundError, UserEvent, VectorStore

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "retriever_state_ca3b644.tar.xz"
OPENERS: dict[str, Callable[[Path], VectorStore]] = {
    "edge": lambda folder: EdgeVectorStore(folder / "edge", 8),
    "client": lambda folder: ClientVectorStore.local(folder / "client", dimension=8),
}


@pytest.mark.parametrize("backend", sorted(OPENERS))
def test_state_written_before_the_event_log_is_moved_into_it(backend: str, tmp_path: Path) -> None:
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    store = OPENERS[backend](tmp_path)
    try:
        alice = store.get_user("alice")
        assert [(e.item_id, e.event_type, e.timestamp, e.weight) for e in alice.events] == [
            ("item-0", "view", 10.0, 1.0),
            ("item-1", "purchase", 60.0, 4.0),
        ]
        assert alice.vector is not None
        assert dict(alice.shown_counts) == {"item-0": 1, "item-2": 1}  # item-1's purchase came after the page
        assert [e.item_id for e in store.get_user("bob").events] == ["item-1", "item-3"]
        carol = store.get_user("carol")
        assert (carol.events, dict(carol.shown_counts)) == ((), {"item-4": 1})
        assert store.count_users() == 3
        popularity = {i.item_id: i.payload["popularity"] for i in store.get_items([f"item-{n}" for n in range(6)])}
        assert popularity == {"item-0": 1, "item-1": 2, "item-2": 0, "item-3": 1, "item-4": 0, "item-5": 0}
        (page,) = store.get_impressions("rec-1")
        assert (page.engaged_item_ids, page.converted_item_ids) == (("item-1",), ("item-1",))
        # A retry of an event written before the move is recognised (its id is derived the same way).
        store.append_user_events("bob", [UserEvent("item-3", "click", 12.0, 2.0)])
        assert len(store.get_user("bob").events) == 2
        store.append_user_events("bob", [UserEvent("item-5", "view", 13.0)])
    finally:
        store.close()
    reopened = OPENERS[backend](tmp_path)
    try:
        assert [e.item_id for e in reopened.get_user("bob").events] == ["item-1", "item-3", "item-5"]
        assert reopened.get_items(["item-1"])[0].payload["popularity"] == 2
    finally:
        reopened.close()


@pytest.mark.parametrize("backend", sorted(OPENERS))
def test_snapshots_of_the_first_event_log_layout_are_recomputed(backend: str, tmp_path: Path) -> None:
    """The first event-log layout kept one version number (incarnation x 2^32 + events + impressions) and no
    impressions count: its snapshots are recomputed at start-up, its tombstones stay tombstones."""
    store = OPENERS[backend](tmp_path)
    store.upsert_items([Item(f"item-{n}", tuple(float(n == d) for d in range(8)), {}) for n in range(3)])
    store.record_impressions([Impression("rec-1", 1, "alice", ("item-0", "item-2"), timestamp=5.0)])
    store.append_user_events("alice", [UserEvent("item-0", "view", 10.0), UserEvent("item-1", "click", 11.0)])
    store.append_user_events("bob", [UserEvent("item-1", "view", 12.0)])
    store.delete_user("bob")
    engine = store._log._engine  # type: ignore[attr-defined]
    payload, vector = engine.read_user("alice")
    first_layout = {k: v for k, v in payload.items() if k != "impressions_counted"} | {"version": 2**32 + 3}
    engine.write_user("alice", Version(0, 2, 1), first_layout, vector)
    engine.write_user("bob", Version(2, 0, 0), {"incarnation": 2, "version": 2 * 2**32, "state": "deleted"}, None)
    store.close()
    reopened = OPENERS[backend](tmp_path)
    try:
        alice = reopened.get_user("alice")
        assert [e.item_id for e in alice.events] == ["item-0", "item-1"]
        assert dict(alice.shown_counts) == {"item-2": 1}
        assert reopened.count_users() == 1
        with pytest.raises(NotFoundError):
            reopened.get_user("bob")
        reopened.append_user_events("alice", [UserEvent("item-2", "view", 13.0)])
        assert [e.item_id for e in reopened.get_user("alice").events] == ["item-0", "item-1", "item-2"]
        fresh = reopened.append_user_events("bob", [UserEvent("item-2", "purchase", 14.0)])
        assert [e.item_id for e in fresh.events] == ["item-2"]
    finally:
        reopened.close()
