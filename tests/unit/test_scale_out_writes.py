"""Two retriever replicas on one store: separate store objects (separate locks, as two processes would have)
over one engine, many threads writing interleaved events for the same users and items, some calls retried.
Afterwards every acknowledged event counts exactly once: in its user's history, in its item's popularity, in
the profile vector, in the attribution of what was shown."""

from __future__ import annotations

import copy
import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from services.retriever.client_store import ClientVectorStore
from services.retriever.edge_store import EdgeVectorStore, _EdgeLog
from services.retriever.eventlog import EventLog
from services.retriever.profiles import history_profile
from services.retriever.store import Impression, Item, ReadWriteLock, UserEvent, VectorStore

DIM = 8
USERS = [f"user-{n}" for n in range(5)]
ITEMS = [f"item-{n}" for n in range(20)]
THREADS = 8
CALLS_PER_THREAD = 30
RETRY_SHARE = 0.10
HALF_LIFE = 20.0
MAX_HISTORY = 1000  # more than any user gets here, so the whole history is kept and checkable
TYPES = ("view", "click", "purchase")


def second_replica(store: EdgeVectorStore) -> EdgeVectorStore:
    """Another store object over the same open shards with locks of its own: what a second process would be
    if the embedded engine let two processes open one folder."""
    twin = copy.copy(store)
    twin._write_lock = threading.RLock()
    twin._rw = ReadWriteLock()
    twin._log = EventLog(_EdgeLog(twin), MAX_HISTORY, HALF_LIFE)  # its writes take the twin's locks
    return twin


@pytest.fixture(params=["edge", "client"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[VectorStore, VectorStore]]:
    if request.param == "edge":
        first = EdgeVectorStore(tmp_path / "edge", DIM, max_history=MAX_HISTORY, half_life_events=HALF_LIFE)
        yield first, second_replica(first)
        first.close()
    else:
        client = QdrantClient(location=":memory:", force_disable_check_same_thread=True)
        stores = [
            ClientVectorStore(client, dimension=DIM, max_history=MAX_HISTORY, half_life_events=HALF_LIFE)
            for _ in range(2)
        ]
        yield stores[0], stores[1]
        client.close()


def catalogue() -> list[Item]:
    rng = np.random.default_rng(3)
    return [Item(i, tuple(float(x) for x in rng.normal(size=DIM)), {"title": i}) for i in ITEMS]


def test_two_replicas_one_store_count_every_event_once(replicas: tuple[VectorStore, VectorStore]) -> None:
    items = catalogue()
    replicas[0].upsert_items(items)
    # Every user was shown every item on page 1 of their own recommendation, so events can be attributed.
    for user in USERS:
        replicas[1].record_impression(Impression(f"rec-{user}", 1, user, tuple(ITEMS), timestamp=1.0))
    acknowledged: list[tuple[str, UserEvent]] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def writer(thread: int) -> None:
        rng = random.Random(thread)
        try:
            for call in range(CALLS_PER_THREAD):
                user = rng.choice(USERS)
                events = [
                    UserEvent(
                        rng.choice(ITEMS),
                        rng.choice(TYPES),
                        timestamp=100.0 + thread * 1000 + call + n / 10,
                        weight=rng.choice((1.0, 2.0, 4.0)),
                        recommendation_id=f"rec-{user}" if rng.random() < 0.5 else "",
                        event_id=f"t{thread}-c{call}-e{n}",
                    )
                    for n in range(rng.randint(1, 3))
                ]
                replicas[(thread + call) % 2].append_user_events(user, events)
                if rng.random() < RETRY_SHARE:  # the caller timed out and retries, reaching the other replica
                    replicas[(thread + call + 1) % 2].append_user_events(user, events)
                with lock:
                    acknowledged.extend((user, e) for e in events)
        except BaseException as error:  # reported below, so a crash shows as a failure rather than a hang
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures

    reader = replicas[0]
    vectors = {item.item_id: item.vector for item in items}
    missing = doubled = profiles_off = 0
    for user in USERS:
        expected = sorted((e for u, e in acknowledged if u == user), key=lambda e: e.timestamp)
        stored = reader.get_user(user)
        seen = Counter((e.item_id, e.timestamp) for e in stored.events)
        missing += sum(1 for e in expected if (e.item_id, e.timestamp) not in seen)
        doubled += sum(n - 1 for n in seen.values() if n > 1)
        from_scratch = history_profile(expected, vectors, HALF_LIFE)
        if stored.vector is None or from_scratch is None or not np.allclose(stored.vector, from_scratch, atol=1e-5):
            profiles_off += 1
    per_item = Counter(e.item_id for _, e in acknowledged)
    stored_popularity = {i.item_id: i.payload["popularity"] for i in reader.get_items(ITEMS)}
    popularity_off = {i: (stored_popularity[i], per_item[i]) for i in ITEMS if stored_popularity[i] != per_item[i]}
    engaged_off = 0
    for user in USERS:
        (shown,) = reader.get_impressions(f"rec-{user}")
        attributed = {e.item_id for u, e in acknowledged if u == user and e.recommendation_id}
        engaged_off += len(set(shown.engaged_item_ids) ^ attributed)
    report = (
        f"{len(acknowledged)} events acknowledged: {missing} missing from histories, {doubled} doubled; "
        f"popularity off on {len(popularity_off)} of {len(ITEMS)} items by "
        f"{sum(abs(s - n) for s, n in popularity_off.values())} in all; {profiles_off} of {len(USERS)} profile "
        f"vectors differ from the ones computed from scratch; {engaged_off} attributions wrong"
    )
    assert (missing, doubled, len(popularity_off), profiles_off, engaged_off) == (0, 0, 0, 0, 0), report
