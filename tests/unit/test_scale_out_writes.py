"""Two retriever replicas on one store: separate store objects (separate locks, as two processes would have)
over one engine, many threads writing interleaved events for the same users and items, some calls retried.
Afterwards every acknowledged event counts exactly once: in its user's history, in its item's popularity, in
the profile vector, in the attribution of what was shown."""

from __future__ import annotations

import copy
import dataclasses
import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from services.gateway import experiments
from services.gateway.model import Impression as GatewayImpression
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
        replicas[1].record_impressions([Impression(f"rec-{user}", 1, user, tuple(ITEMS), timestamp=1.0)])
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


EXPERIMENT = "ranker-v2"
ARMS = ("control", "treatment")
PAGES_PER_THREAD = 15


def test_experiment_report_equals_a_hand_count_under_concurrent_writers(
    replicas: tuple[VectorStore, VectorStore],
) -> None:
    """Both replicas record an experiment's pages and the clicks and purchases on them at once, some calls
    repeated on the other replica: the report from the stored impressions equals a count of what was sent."""
    replicas[0].upsert_items(catalogue())
    sent: list[tuple[Impression, list[UserEvent]]] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def writer(thread: int) -> None:
        rng = random.Random(100 + thread)
        try:
            for call in range(PAGES_PER_THREAD):
                user = rng.choice(USERS)
                first, other = replicas[(thread + call) % 2], replicas[(thread + call + 1) % 2]
                rid = f"t{thread}-r{call}"
                page = Impression(
                    rid,
                    1,
                    user,
                    tuple(rng.sample(ITEMS, 4)),
                    experiment=EXPERIMENT,
                    arm=rng.choice(ARMS),
                    timestamp=100.0 + thread * 1000 + call,
                )
                first.record_impressions([page])
                if rng.random() < RETRY_SHARE:
                    other.record_impressions([page])
                acted = rng.sample(page.item_ids, rng.randint(0, 2))
                if rng.random() < 0.2:  # naming the recommendation, but not shown on it: attributed to nothing
                    acted.append(rng.choice([i for i in ITEMS if i not in page.item_ids]))
                events = [
                    UserEvent(item, rng.choice(("click", "purchase")), page.timestamp + 0.5, 1.0, rid, f"{rid}-e{n}")
                    for n, item in enumerate(acted)
                ]
                if events:
                    other.append_user_events(user, events)  # the click reaches the other replica
                    if rng.random() < RETRY_SHARE:
                        first.append_user_events(user, events)
                with lock:
                    sent.append((page, events))
        except BaseException as error:  # reported below, so a crash shows as a failure rather than a hang
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures

    stored: list[Impression] = []
    token = ""
    while True:
        page_of_list, token = replicas[1].list_impressions(EXPERIMENT, 50, token)
        stored.extend(page_of_list)
        if not token:
            break
    rows = experiments.report(EXPERIMENT, ARMS, [GatewayImpression(**dataclasses.asdict(i)) for i in stored])
    reported = [(r.arm, r.users, r.impressions, r.items_shown, r.engaged, r.converted) for r in rows]
    by_hand = []
    for arm in ARMS:
        of_arm = [(page, events) for page, events in sent if page.arm == arm]
        by_hand.append(
            (
                arm,
                len({page.user_id for page, _ in of_arm}),
                len(of_arm),
                sum(len(page.item_ids) for page, _ in of_arm),
                sum(1 for page, events in of_arm if any(e.item_id in page.item_ids for e in events)),
                sum(
                    1
                    for page, events in of_arm
                    if any(e.item_id in page.item_ids and e.event_type == "purchase" for e in events)
                ),
            )
        )
    assert reported == by_hand
