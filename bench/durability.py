"""Cost of acknowledging writes only once they are on disk (RETRIEVER_SYNC_WRITES) on the embedded engine:
RecordEvents-sized writes (one user's events) one at a time and from concurrent writers, with and without
the group-committed flush. Prints a table.

    .venv/bin/python bench/durability.py [--items 400] [--writes 200] [--threads 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.retriever.edge_store import EdgeVectorStore
from services.retriever.store import Item, UserEvent


def run(items: int, writes: int, threads: int, sync: bool) -> tuple[float, float, float, int]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        store = EdgeVectorStore(folder, 384, sync_writes=sync)
        vectors = rng.normal(size=(items, 384)).astype(np.float32)
        for start in range(0, items, 128):
            store.upsert_items(
                [
                    Item(f"i{n}", tuple(vectors[n]), {"title": f"item {n}"})
                    for n in range(start, min(items, start + 128))
                ]
            )

        def write(n: int) -> float:
            started = time.perf_counter()
            store.append_user_events(
                f"u{n}", [UserEvent(f"i{(n * 7 + j) % items}", "view", float(n), 1.0) for j in range(3)]
            )
            return (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            latencies = sorted(pool.map(write, range(writes)))
        elapsed = time.perf_counter() - started
        flushes = store._commit.flushes if store._commit is not None else 0
        store.close()
    return statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))], writes / elapsed, flushes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print("| sync_writes | writers | p50 ms | p99 ms | writes/s | flushes |")
    print("|---|---|---|---|---|---|")
    for threads in (1, args.threads):
        for sync in (False, True):
            p50, p99, rate, flushes = run(args.items, args.writes, threads, sync)
            print(f"| {sync} | {threads} | {p50:.2f} | {p99:.2f} | {rate:.0f} | {flushes} |")


if __name__ == "__main__":
    main()
