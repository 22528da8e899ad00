"""One load-generator process for bench/recommend.py: `calls` Recommends from `concurrency` callers against a
gateway, started when the parent says so (after every process is ready, so start-up is not measured), answered
with the latencies, the gateway's stage timings and this process's own CPU time as one JSON line.

    python -m bench.load_client --address 127.0.0.1:50050 --users-file users.json --concurrency 4 --calls 150

Kept apart from bench/recommend.py so that a client process imports only the client library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

from recsys_client import AsyncRecsysClient, RecsysError

QUERIES = ("soldering iron", "nitrile gloves", "wood glue", "digital caliper", "safety glasses", "ph meter")


async def run(
    address: str, users: list[str], concurrency: int, calls: int, seed: int, query: bool
) -> dict[str, object]:
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    errors = 0
    issued = 0
    rng = random.Random(seed)
    async with AsyncRecsysClient(address) as client:
        await client.recommend(users[0], k=10)  # the channel connected before the start
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        cpu_started, started = time.process_time(), time.monotonic()

        async def caller() -> None:
            nonlocal issued, errors
            while issued < calls:
                issued += 1
                began = time.perf_counter()
                try:
                    response = await client.recommend(
                        rng.choice(users), k=10, query=rng.choice(QUERIES) if query else ""
                    )
                except RecsysError:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - began) * 1000)
                for stage, ms in response.stage_ms.items():
                    stages.setdefault(stage, []).append(ms)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        ended = time.monotonic()
    return {
        "latencies": latencies,
        "stages": stages,
        "errors": errors,
        "cpu_s": time.process_time() - cpu_started,
        "started": started,
        "ended": ended,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--users-file", type=Path, required=True, help="a JSON list of user ids")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--query", action="store_true")
    args = parser.parse_args()
    users = json.loads(args.users_file.read_text())
    result = asyncio.run(run(args.address, users, args.concurrency, args.calls, args.seed, args.query))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
