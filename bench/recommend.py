"""Recommend end to end: the five services as separate processes on this machine, over a catalog of N items
(real Amazon-Scientific texts and their real vectors, repeated with small variations past the 4,385 originals),
at several concurrencies, with the gateway's own stage timings; the same pipeline in one process as the
reference for what the RPC hops cost; each service's resident memory; and p50 as the catalog grows.

    .venv/bin/python bench/recommend.py --sizes 10000 100000 --concurrency 1 8 32 --calls 300 --pools 100 1000

Items go straight into the retriever (UpsertItems with their vectors): ingestion through the embedding model is
bench/ingestion.py's subject, and embedding 100k texts on two cores would take this benchmark's whole budget.
Users have five real interactions each (their first five in the data set) recorded through the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import struct_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    REPO,
    RESULTS,
    SCIENTIFIC,
    cpu_seconds,
    machine,
    machine_line,
    median,
    percentile,
    rss_mb,
    table,
    write_json,
)
from bench.inprocess import local_recommender
from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from recsys_client import AsyncRecsysClient, Event
from services.cli.suite import Suite, free_base_port
from services.cli.training import embed_items, train_and_publish
from services.datasets.loaders import Dataset, load_dataset
from services.gateway.config import GatewaySettings
from services.gateway.recommender import RecommendQuery
from services.ranker.checkpoints import latest_checkpoint
from services.ranker.training import TrainConfig
from services.retriever.config import RetrieverSettings

WORK = REPO / "var" / "bench" / "recommend"
VARIATION = 0.15  # noise added to a copy's vector before normalising: copies stay near, never identical
BATCH = 512
STAGES = ("profile", "suggest", "retrieval", "history", "ranker", "rules", "record")
# The backend call behind each of the gateway's stages, for the hop accounting.
STAGE_RPCS = {
    "profile": "RetrieverService/GetUserProfile",
    "suggest": "RankerService/SuggestCandidates",
    "retrieval": "RetrieverService/SearchItems",
    "ranker": "RankerService/ScoreCandidates",
    "record": "RetrieverService/RecordImpression",
}


def handler_ms(logs: Path, since: float, until: float) -> dict[str, float]:
    """Median time inside each RPC's handler, from the services' own `rpc` log lines in [since, until]."""
    times: dict[str, list[float]] = {}
    for log in logs.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if '"event": "rpc"' not in line:
                continue
            entry = json.loads(line)
            stamp = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
            if since <= stamp <= until:
                times.setdefault(entry["method"].split(".v1.", 1)[-1], []).append(float(entry["ms"]))
    return {method: median(values) for method, values in sorted(times.items())}


def catalog_batches(dataset: Dataset, vectors: np.ndarray, size: int, seed: int = 0) -> Any:
    """Batches of retriever Items: the originals first, then copies with a perturbed vector and a numbered
    title, cycling through the originals."""
    rng = np.random.default_rng(seed)
    originals = dataset.items
    batch: list[retriever_pb2.Item] = []
    for n in range(size):
        base = originals[n % len(originals)]
        vector = vectors[n % len(originals)].astype(np.float64)
        copy = n // len(originals)
        if copy:
            vector = vector + rng.normal(0.0, VARIATION / np.sqrt(len(vector)), len(vector))
            vector /= np.linalg.norm(vector)
        payload = struct_pb2.Struct()
        payload.update(
            {
                "title": base.title if not copy else f"{base.title} (variant {copy})",
                "categories": list(base.categories),
                "brand": base.brand,
                "price": float(rng.uniform(2, 200)),
                "in_stock": bool(rng.random() < 0.9),
            }
        )
        item_id = base.item_id if not copy else f"{base.item_id}~{copy}"
        batch.append(retriever_pb2.Item(item_id=item_id, vector=vector.astype(np.float32).tolist(), payload=payload))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def upsert_with_retry(stub: retriever_pb2_grpc.RetrieverServiceStub, request: retriever_pb2.UpsertItemsRequest) -> None:
    """UpsertItems is idempotent: a call refused while the server rotates the connection (max connection age)
    is sent again."""
    for attempt in range(3):
        try:
            stub.UpsertItems(request, timeout=120)
            return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                raise
            time.sleep(1)


def load_catalog(address: str, dataset: Dataset, vectors: np.ndarray, size: int) -> None:
    """Writes the catalog; the items are written in a fixed order, so a load cut short (--reuse) resumes after
    what is stored."""
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        stored = stub.GetCollectionInfo(retriever_pb2.GetCollectionInfoRequest(), timeout=30).items
        written, started = 0, time.monotonic()
        for batch in catalog_batches(dataset, vectors, size):
            if written + len(batch) > stored:
                upsert_with_retry(stub, retriever_pb2.UpsertItemsRequest(items=batch))
            written += len(batch)
            if written % 20_000 < BATCH:
                print(f"  {written:,}/{size:,} items written ({written / (time.monotonic() - started):,.0f}/s)")


def wait_for_index(address: str, timeout_s: float) -> float:
    """Waits until no background build runs and fewer items are unindexed than would start another one: the
    count after writes (RETRIEVER_INDEX_MIN_UNINDEXED: the writes made during a build replay unindexed) or, once
    writes have stopped for RETRIEVER_INDEX_IDLE_S, RETRIEVER_INDEX_IDLE_MIN_UNINDEXED (the environment's
    settings, as the suite's retriever reads them); returns the seconds waited."""
    settings = RetrieverSettings()
    left = settings.index_min_unindexed
    if settings.index_idle_s:
        left = min(left, settings.index_idle_min_unindexed)
    started = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        while time.monotonic() - started < timeout_s:
            info = stub.GetCollectionInfo(retriever_pb2.GetCollectionInfoRequest(), timeout=30)
            if info.items < left or (info.index_ready and info.items - info.indexed_vectors < left):
                return time.monotonic() - started
            time.sleep(5)
    print(f"  the index was not ready after {timeout_s:.0f} s; measuring with part of it exact")
    return time.monotonic() - started


def user_histories(dataset: Dataset, users: int) -> dict[str, list[str]]:
    by_user: dict[str, list[str]] = {}
    for interaction in sorted(dataset.interactions, key=lambda i: i.timestamp):
        history = by_user.setdefault(interaction.user_id, [])
        if len(history) < 5 and interaction.item_id not in history:
            history.append(interaction.item_id)
    full = [(u, h) for u, h in by_user.items() if len(h) == 5]
    return {f"bench-{u}": h for u, h in random.Random(0).sample(full, min(users, len(full)))}


async def load(
    address: str, users: Sequence[str], concurrency: int, calls: int, processes: int = 1, query: bool = False
) -> dict[str, Any]:
    """A level of load from `processes` client processes (bench/load_client.py, each its share of the callers and
    calls, started together once all are connected): one Python process on two cores can itself become the
    limit at high concurrency, and its CPU is reported beside the servers'."""
    processes = max(1, min(processes, concurrency))
    shares = [(concurrency // processes + (n < concurrency % processes), calls // processes + (n < calls % processes))
              for n in range(processes)]  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as users_file:
        json.dump(list(users), users_file)
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.load_client",
            "--address",
            address,
            "--users-file",
            users_file.name,
            "--concurrency",
            str(c),
            "--calls",
            str(n),
            "--seed",
            str(concurrency * 100 + i),
            *(["--query"] if query else []),
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for i, (c, n) in enumerate(shares)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            ready = await child.stdout.readline()
            if ready.strip() != b"ready":
                raise RuntimeError(f"a load client did not start: {ready!r}")
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        parts = [json.loads((await child.communicate())[0]) for child in children]
    finally:
        os.unlink(users_file.name)
    elapsed = max(part["ended"] for part in parts) - min(part["started"] for part in parts)
    latencies = [ms for part in parts for ms in part["latencies"]]
    stages: dict[str, list[float]] = {}
    for part in parts:
        for stage, values in part["stages"].items():
            stages.setdefault(stage, []).extend(values)
    return {
        "concurrency": concurrency,
        "client_processes": processes,
        "calls": len(latencies),
        "errors": sum(part["errors"] for part in parts),
        "per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "stages_p50_ms": {stage: median(values) for stage, values in sorted(stages.items())},
        "client_cpu_ms_per_call": 1000 * sum(part["cpu_s"] for part in parts) / max(len(latencies), 1),
    }


async def load_in_process(state: Path, users: Sequence[str], calls: int, pool: int) -> dict[str, Any]:
    # The served gateway's default number of item-graph candidates, so both pipelines do the same work.
    graph_candidates = GatewaySettings().graph_candidates
    recommender, retrieval, _ = await local_recommender(
        state / "qdrant", state / "checkpoints", pool, 1.0, graph_candidates
    )
    rng = random.Random(1)
    latencies: list[float] = []
    try:
        for _ in range(20):  # warm-up
            await recommender.recommend(RecommendQuery(user_id=rng.choice(users), k=10))
        for _ in range(calls):
            started = time.perf_counter()
            await recommender.recommend(RecommendQuery(user_id=rng.choice(users), k=10))
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        await retrieval.close()
    return {"calls": len(latencies), "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}


def checkpoint_for(dataset: Dataset) -> Path:
    """A ranker trained on the data set (once; reused by later runs)."""
    root = WORK / "checkpoints"
    if latest_checkpoint(root) is None:
        print("training a ranker for the benchmark (a few minutes, once)")
        train_and_publish(dataset, root, WORK / "cache", TrainConfig(max_seconds=240))
    return root


async def measure_size(
    args: argparse.Namespace,
    dataset: Dataset,
    vectors: np.ndarray,
    size: int,
    pool: int,
    *,
    reuse: bool,
    in_process: bool,
) -> dict[str, Any]:
    state = WORK / f"suite-{size}"
    loaded, recorded = state / "catalog-loaded", state / "events-recorded"
    if state.exists() and not reuse:
        shutil.rmtree(state)
    fresh = not loaded.exists()
    shutil.copytree(checkpoint_for(dataset), state / "checkpoints", dirs_exist_ok=True)
    no_metrics = {
        f"{name}_METRICS_PORT": "0" for name in ("GATEWAY", "PREPROCESSOR", "EMBEDDING", "RETRIEVER", "RANKER")
    }
    suite = Suite(free_base_port(), state, {"GATEWAY_CANDIDATE_POOL": str(pool), **no_metrics})
    histories = user_histories(dataset, args.users)
    users = list(histories)
    result: dict[str, Any] = {"items": size, "candidate_pool": pool}
    suite.start()
    try:
        suite.wait_until_serving(600)
        if fresh:
            print(f"loading {size:,} items")
            load_catalog(suite.address("retriever"), dataset, vectors, size)
            loaded.touch()
        result["index_wait_s"] = wait_for_index(suite.address("retriever"), args.index_timeout)
        if not recorded.exists():
            async with AsyncRecsysClient(suite.address("gateway")) as client:
                events = [Event(u, i) for u, items in histories.items() for i in items]
                for start in range(0, len(events), 1000):
                    await client.record_events(events[start : start + 1000], deadline=60)
            recorded.touch()
        address = suite.address("gateway")
        await load(address, users, 2, 30, query=args.query)  # warm-up
        result["levels"] = []
        for concurrency in args.concurrency:
            # CPU each service spent per call: where the two cores go at each load level.
            before = {name: cpu_seconds(process.pid) for name, process in suite.processes.items()}
            window_start = time.time()
            level = await load(address, users, concurrency, args.calls, args.client_processes, args.query)
            level["window"] = (window_start, time.time())
            level["cpu_ms_per_call"] = {
                name: 1000 * (cpu_seconds(process.pid) - before[name]) / max(level["calls"], 1)
                for name, process in suite.processes.items()
            }
            result["levels"].append(level)
        result["rss_mb"] = {name: rss_mb(process.pid) for name, process in suite.processes.items()}
    finally:
        suite.stop()
    for level in result.get("levels", []):
        level["handler_ms_p50"] = handler_ms(state / "logs", *level.pop("window"))
    if in_process:
        result["in_process"] = await load_in_process(state, users, args.calls, pool)
    return result


def report(runs: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> None:
    print(machine_line(info))
    print(f"Recommend k=10, personalised (5-event histories), {args.users} users, {args.calls} calls per level\n")
    rows = []
    for run in runs:
        for level in run["levels"]:
            stages = level["stages_p50_ms"]
            breakdown = " ".join(f"{s} {stages[s]:.1f}" for s in STAGES if s in stages)
            rows.append(
                [
                    run["items"],
                    run["candidate_pool"],
                    level["concurrency"],
                    level["calls"],
                    level["errors"],
                    level["per_s"],
                    level["p50_ms"],
                    level["p99_ms"],
                    breakdown,
                ]
            )
    print(
        table(["items", "pool", "concurrency", "calls", "errors", "calls/s", "p50 ms", "p99 ms", "stage p50 ms"], rows)
    )
    hops = [r for r in runs if "in_process" in r]
    if hops:
        print("\nRPC hops against the same pipeline in one process (concurrency 1):")
        rows = []
        for run in hops:
            served = next(level for level in run["levels"] if level["concurrency"] == 1)
            local = run["in_process"]
            cost = 100 * (served["p50_ms"] / local["p50_ms"] - 1)
            rows.append([run["items"], run["candidate_pool"], served["p50_ms"], local["p50_ms"], cost])
        print(table(["items", "pool", "five services p50 ms", "one process p50 ms", "hops cost %"], rows))
        print("\nWhere the hops go at concurrency 1: the gateway's wait for each backend call (stage p50) against")
        print("the time inside that call's handler (the backend's own log, p50); the rest is serialisation,")
        print("transport and the two event loops:")
        rows = []
        for run in hops:
            served = next(level for level in run["levels"] if level["concurrency"] == 1)
            for stage, rpc in STAGE_RPCS.items():
                waited = served["stages_p50_ms"].get(stage)
                inside = served["handler_ms_p50"].get(rpc)
                if waited is not None and inside is not None:
                    rows.append([run["items"], stage, rpc, waited, inside, waited - inside])
        print(table(["items", "stage", "call", "gateway waits ms", "handler ms", "hop ms"], rows))
    print("\nCPU milliseconds per Recommend, by service (user + system time over the level / calls), and the load")
    print("generator's own (its processes together), which shares the same two cores:")
    cpu_rows = []
    for run in runs:
        for level in run["levels"]:
            spent = level["cpu_ms_per_call"]
            row = [
                run["items"],
                run["candidate_pool"],
                level["concurrency"],
                *spent.values(),
                sum(spent.values()),
                level["client_cpu_ms_per_call"],
            ]
            cpu_rows.append(row)
    header = ["items", "pool", "concurrency", *runs[0]["levels"][0]["cpu_ms_per_call"], "all five", "client"]
    print(table(header, cpu_rows))
    print("\nResident memory (MB) after the load:")
    print(
        table(
            ["items", "pool", *runs[0]["rss_mb"]],
            [[r["items"], r["candidate_pool"], *r["rss_mb"].values()] for r in runs],
        )
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SCIENTIFIC)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--pools", type=int, nargs="+", default=[100, 1000], help="GATEWAY_CANDIDATE_POOL values")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--calls", type=int, default=300, help="calls per concurrency level")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--index-timeout", type=float, default=1800, help="seconds to wait for the HNSW index")
    parser.add_argument(
        "--reuse", action="store_true", help="keep a size's catalog from an earlier run (a load cut short resumes)"
    )
    parser.add_argument("--no-in-process", action="store_true", help="skip the one-process reference")
    parser.add_argument(
        "--client-processes", type=int, default=2, help="load generator processes (at most one per caller)"
    )
    parser.add_argument(
        "--query",
        action="store_true",
        help="each Recommend has a short query (adds preprocessing and embedding)",
    )
    parser.add_argument("--name", default="recommend", help="results file: docs/results/NAME.json")
    args = parser.parse_args()

    dataset = load_dataset(args.data)
    vectors, _ = embed_items(dataset.items, WORK / "cache")
    info = machine()
    runs = []
    for size in args.sizes:
        for number, pool in enumerate(args.pools):
            # Later pools reuse the catalog the first one loaded.
            reuse = args.reuse or number > 0
            in_process = not args.no_in_process and size == max(args.sizes)
            runs.append(
                await measure_size(args, dataset, np.asarray(vectors), size, pool, reuse=reuse, in_process=in_process)
            )
    report(runs, info, args)
    path = write_json(args.name, {"machine": info, "settings": vars(args) | {"data": str(args.data)}, "runs": runs})
    scale = plot_scale(RESULTS / "recommend-scale.png")
    print(f"\nwrote {path} and {scale}")


def plot_scale(path: Path) -> Path:
    """p50 and p99 against catalog size at each concurrency, over every recommend*.json run so far (the 1M point
    is a run of its own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points: dict[int, dict[int, tuple[float, float]]] = {}
    for result in sorted(RESULTS.glob("recommend*.json")):
        for run in json.loads(result.read_text()).get("runs", []):
            for level in run.get("levels", []):
                points.setdefault(level["concurrency"], {})[run["items"]] = (level["p50_ms"], level["p99_ms"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for concurrency, by_size in sorted(points.items()):
        sizes = sorted(by_size)
        for axis, index in zip(axes, (0, 1), strict=True):
            axis.plot(sizes, [by_size[n][index] for n in sizes], marker="o", label=f"concurrency {concurrency}")
    for axis, name in zip(axes, ("p50", "p99"), strict=True):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("catalog items")
        axis.set_ylabel(f"Recommend {name} ms")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    fig.suptitle("Recommend through the five services as the catalog grows (2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    asyncio.run(main())
