"""A bounded load generator for the gateway's Recommend (no ghz here): C concurrent asyncio callers (recsys_client) over
loopback, each a user with a short history, for N calls or T seconds, whichever ends first. Prints latency
percentiles and throughput, and the machine it ran on.

    .venv/bin/python bench/recommend_load.py --target 127.0.0.1:50050 --data ../shared/data/amazon-scientific \
        --limit-items 1000 --concurrency 1 4 16 --calls 400
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import time
from pathlib import Path

from recsys_client import AsyncRecsysClient, Event, RecsysError
from services.datasets.loaders import load_dataset


async def _run(
    client: AsyncRecsysClient,
    users: list[str],
    concurrency: int,
    calls: int,
    seconds: float,
    query: str,
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal errors, issued
        while issued < calls and time.monotonic() < deadline:
            issued += 1
            user = random.choice(users)
            started = time.perf_counter()
            try:
                await client.recommend(user, k=10, query=query)
                latencies.append(time.perf_counter() - started)
            except RecsysError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50050")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit-items", type=int, default=1000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--calls", type=int, default=400, help="calls per concurrency level")
    parser.add_argument("--seconds", type=float, default=60, help="time cap per concurrency level")
    parser.add_argument("--query", default="", help="a query text (adds preprocessor + embedding calls)")
    args = parser.parse_args()

    dataset = load_dataset(args.data, limit_items=args.limit_items)
    rng = random.Random(0)
    item_ids = [item.item_id for item in dataset.items]
    async with AsyncRecsysClient(args.target) as client:
        users = [f"bench-{n}" for n in range(args.users)]
        await client.record_events([Event(u, i, "view") for u in users for i in rng.sample(item_ids, 5)])
        await _run(client, users, 2, 20, 30, args.query)  # warm-up
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}; "
            f"{len(item_ids)} items, k=10, query={args.query!r}"
        )
        print("| concurrency | calls | errors | calls/s | p50 ms | p95 ms | p99 ms |")
        print("|---|---|---|---|---|---|---|")
        for concurrency in args.concurrency:
            latencies, errors, elapsed = await _run(client, users, concurrency, args.calls, args.seconds, args.query)
            ms = [v * 1000 for v in latencies]
            print(
                f"| {concurrency} | {len(ms)} | {errors} | {len(ms) / elapsed:.0f} | {_percentile(ms, 50):.1f} | "
                f"{_percentile(ms, 95):.1f} | {_percentile(ms, 99):.1f} |"
            )


if __name__ == "__main__":
    asyncio.run(main())
