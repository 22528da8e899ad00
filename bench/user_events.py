"""GetUserProfile and AppendUserEvents on a store that already holds many events: N users with E events each
(1,000 x 1,000 = 1M by default) on the embedded engine, through the store's own API (the call the servicer
makes, without the gRPC hop). Prints a table and writes docs/results/NAME.json.

    .venv/bin/python bench/user_events.py [--users 1000] [--events-per-user 1000] [--name user-events]

Fills once per folder (`--reuse` measures an existing one again); event types and weights vary, items are
random unit vectors (the values do not matter here, their count per profile does).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, machine, machine_line, median, percentile, table, write_json
from services.retriever.edge_store import EdgeVectorStore
from services.retriever.store import Item, UserEvent

TYPES = (("view", 1.0), ("click", 2.0), ("add_to_cart", 3.0), ("purchase", 4.0))
BATCH = 500
START = time.time() - 10**7  # event times: in the past (the retriever refuses times ahead of its clock)


def events_for(rng: random.Random, items: int, start: float, count: int) -> list[UserEvent]:
    out = []
    for n in range(count):
        kind, weight = rng.choice(TYPES)
        out.append(UserEvent(f"i{rng.randrange(items)}", kind, start + n, weight))
    return out


def fill(store: EdgeVectorStore, args: argparse.Namespace) -> float:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.items, args.dim)).astype(np.float32)
    for start in range(0, args.items, BATCH):
        chunk = vectors[start : start + BATCH]
        store.upsert_items([Item(f"i{start + k}", tuple(map(float, v)), {}) for k, v in enumerate(chunk)])
    picker = random.Random(1)
    started = time.perf_counter()
    for user in range(args.users):
        for offset in range(0, args.events_per_user, BATCH):
            count = min(BATCH, args.events_per_user - offset)
            store.append_user_events(f"u{user}", events_for(picker, args.items, START + offset, count))
        if user % 100 == 99:
            rate = (user + 1) * args.events_per_user / (time.perf_counter() - started)
            print(f"  {user + 1} users filled, {rate:,.0f} events/s", flush=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--events-per-user", type=int, default=1000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--reads", type=int, default=500)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--folder", type=Path, default=REPO / "var" / "bench" / "user_events")
    parser.add_argument("--reuse", action="store_true", help="measure the folder an earlier run filled")
    parser.add_argument("--name", default="user-events")
    args = parser.parse_args()

    info = machine()
    if not args.reuse:
        shutil.rmtree(args.folder, ignore_errors=True)
    store = EdgeVectorStore(args.folder, args.dim)
    try:
        fill_s = fill(store, args) if not args.reuse else 0.0
        total = args.users * args.events_per_user
        rng = random.Random(2)
        reads = []
        for _ in range(args.reads):
            user = f"u{rng.randrange(args.users)}"
            started = time.perf_counter()
            profile = store.get_user(user)
            reads.append(1000 * (time.perf_counter() - started))
        history = len(profile.events)
        writes: dict[int, list[float]] = {1: [], 10: []}
        clock = START + args.events_per_user  # after every filled event, still in the past
        for size, calls in ((1, args.writes), (10, args.writes // 4)):
            for _ in range(calls):
                events = events_for(rng, args.items, clock, size)
                clock += size
                started = time.perf_counter()
                store.append_user_events(f"u{rng.randrange(args.users)}", events)
                writes[size].append(1000 * (time.perf_counter() - started))
    finally:
        store.close()

    rows: list[list[object]] = [
        ["GetUserProfile (get_user)", f"{percentile(reads, 50):.2f}", f"{percentile(reads, 99):.2f}", "", ""],
        *(
            [
                f"AppendUserEvents, {size} event{'s' if size > 1 else ''} a call",
                f"{percentile(times, 50):.2f}",
                f"{percentile(times, 99):.2f}",
                f"{median(times) / size:.2f}",
                len(times),
            ]
            for size, times in writes.items()
        ),
    ]
    print(machine_line(info))
    print(
        f"{total:,} events in the store ({args.users} users x {args.events_per_user}), {args.items} items of "
        f"{args.dim} floats; {history} events in a profile as read"
        + (f"; filled at {total / fill_s:,.0f} events/s" if fill_s else "")
    )
    print(table(["call", "p50 ms", "p99 ms", "p50 ms per event", "calls"], rows))
    write_json(
        args.name,
        {
            "machine": info,
            "settings": {k: str(v) for k, v in vars(args).items()},
            "events": total,
            "profile_events": history,
            "fill_events_per_s": total / fill_s if fill_s else None,
            "get_user_ms": {"p50": percentile(reads, 50), "p99": percentile(reads, 99)},
            "append_ms": {
                str(size): {"p50": percentile(t, 50), "p99": percentile(t, 99)} for size, t in writes.items()
            },
        },
    )


if __name__ == "__main__":
    main()
