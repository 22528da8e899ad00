"""The floor of each stage of a Recommend, measured alone: the engine and model calls in this process (no gRPC),
the whole pipeline in one process (bench/inprocess.py), and a bare gRPC unary call between two processes with a
small and a Recommend-sized (300 KB) message. CPU time per operation (this process's, all threads, plus the
echo server's for the gRPC rows), the median of `--rounds` rounds; docs/performance.md's per-stage budget puts
these beside what each stage costs in the five services.

    .venv/bin/python bench/stage_floors.py --state var/bench/recommend/suite-100000

The state is a folder bench/recommend.py left (its qdrant/ and checkpoints/), not in use by a running suite.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import SCIENTIFIC, machine, machine_line, table, write_json
from bench.inprocess import local_recommender
from bench.recommend import user_histories
from services.datasets.loaders import load_dataset
from services.gateway.recommender import RecommendQuery
from services.ranker.model import ScoreRequest
from services.retriever.store import Impression, SearchQuery

ECHO = "/bench.Echo/Echo"


def cpu_per_call(function: Callable[[], object], calls: int, rounds: int) -> float:
    """Median over rounds of this process's CPU milliseconds per call."""
    results = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            function()
        results.append(1000 * (time.process_time() - started) / calls)
    return statistics.median(results)


async def async_cpu_per_call(function: Callable[[], Awaitable[object]], calls: int, rounds: int) -> float:
    results = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            await function()
        results.append(1000 * (time.process_time() - started) / calls)
    return statistics.median(results)


def _echo_server(ready: Any, control: Any) -> None:
    """A bare grpc.aio server answering its request back; reports its CPU seconds when asked."""

    async def serve() -> None:
        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return request

        server = grpc.aio.server()
        handlers = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.send(port)
        while True:
            if ready.poll(0.02):
                ready.recv()
                ready.send(time.process_time())
            if control.is_set():
                break
            await asyncio.sleep(0.02)
        await server.stop(0)

    asyncio.run(serve())


async def grpc_floor(size: int, calls: int, rounds: int) -> tuple[float, float]:
    """(client, server) CPU milliseconds per bare unary call of `size` bytes each way, one call at a time."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    stop = context.Event()
    process = context.Process(target=_echo_server, args=(child, stop))
    process.start()
    port = parent.recv()
    clients, servers = [], []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(ECHO)
        payload = b"x" * size
        for _ in range(200):
            await call(payload, timeout=10)
        for _ in range(rounds):
            parent.send("cpu")
            server_started = parent.recv()
            started = time.process_time()
            for _ in range(calls):
                await call(payload, timeout=10)
            clients.append(1000 * (time.process_time() - started) / calls)
            parent.send("cpu")
            servers.append(1000 * (parent.recv() - server_started) / calls)
    stop.set()
    process.join()
    return statistics.median(clients), statistics.median(servers)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True, help="a bench/recommend.py suite folder")
    parser.add_argument("--data", type=Path, default=SCIENTIFIC)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="stage_floors")
    args = parser.parse_args()
    info = machine()
    users = list(user_histories(load_dataset(args.data), args.users))
    recommender, retrieval, ranking = await local_recommender(
        args.state / "qdrant", args.state / "checkpoints", 100, 1.0, 100
    )
    store, service = retrieval.retrieval.store, ranking.service
    loaded = service.current
    assert loaded is not None, f"no ranker checkpoint under {args.state / 'checkpoints'}"
    scorer = loaded.scorer
    rng = random.Random(0)
    rows: list[list[Any]] = []
    try:
        # Realistic inputs: each user's profile, graph suggestions and candidates, cycled through.
        cases = []
        for user in users:
            profile = store.get_user(user)
            history = [e.item_id for e in profile.events]
            suggested = [item_id for item_id, _ in scorer.suggest(history, 100)]
            vector = tuple(float(v) for v in profile.vector or ())
            queries = [
                SearchQuery(vector=vector, limit=100, exclude_ids=tuple(history), with_vectors=True),
                SearchQuery(vector=vector, limit=len(suggested) or 1, only_ids=tuple(suggested), with_vectors=True),
                SearchQuery(vector=vector, limit=len(history), only_ids=tuple(history), with_vectors=True),
            ]
            found = store.search(queries)
            candidates = [i for i in [*found[0], *found[1]] if i.vector is not None]
            request = ScoreRequest(
                [i.item_id for i in found[2]],
                np.stack([i.vector for i in found[2] if i.vector is not None]),
                [i.item_id for i in candidates],
                np.stack([i.vector for i in candidates if i.vector is not None]),
            )
            cases.append((user, history, queries, request))

        def pick() -> Any:
            return cases[rng.randrange(len(cases))]

        measured = {
            "profile (retriever: read the user's snapshot)": lambda: store.get_user(pick()[0]),
            "candidates (retriever: nearest 100 + graph's + history, one batch)": lambda: store.search(pick()[2]),
            "impression (retriever: one page written)": lambda: store.record_impressions(
                [Impression(f"floor-{rng.random()}", 1, pick()[0], ("a", "b"), timestamp=time.time())]
            ),
            "graph suggestions (ranker: 100 for the history)": lambda: scorer.suggest(pick()[1], 100),
            "scores (ranker: ~200 candidates)": lambda: scorer.score_many([pick()[3]]),
        }
        for stage, function in measured.items():
            rows.append([stage, cpu_per_call(function, args.calls, args.rounds)])

        async def recommend() -> object:
            return await recommender.recommend(RecommendQuery(user_id=pick()[0], k=10))

        for _ in range(20):
            await recommend()
        rows.append(["the whole pipeline in one process (no gRPC)", await async_cpu_per_call(recommend, 100, 3)])
    finally:
        await recommender.impressions.close(30)
        await retrieval.close()
    for size in (100, 300_000):
        client, server = await grpc_floor(size, args.calls, args.rounds)
        rows.append([f"a bare gRPC unary call, {size:,} bytes each way: client", client])
        rows.append([f"a bare gRPC unary call, {size:,} bytes each way: server", server])
    print(machine_line(info))
    print(table(["stage, measured alone", "CPU ms per call (median)"], rows))
    path = write_json(args.name, {"machine": info, "settings": {"state": str(args.state)}, "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
