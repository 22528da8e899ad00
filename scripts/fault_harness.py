"""Fault harness: the five services under a bounded concurrent load for a fixed time while each backend in
turn is killed with SIGKILL and restarted. Counts answers by RPC, status code and degraded flag, measures
latency percentiles, and audits afterwards that every acknowledged item is stored and every event is stored
exactly once (a RecordEvents that failed is retried once with the same event id, as a client would: an
acknowledged event must be there once, a retried one never twice). Prints a table; writes JSON.

    .venv/bin/python scripts/fault_harness.py --duration 60 --concurrency 16 --json var/fault-harness.json

A failure is an answer other than OK, RESOURCE_EXHAUSTED or a degraded OK that the killed backend does not
explain (a write needs every backend on its path; Recommend has a fallback for each). Exit status 1 when
there is a failure, a lost or doubled write, or the p99 latency exceeds the deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from recsys_client import RecsysClient
from services.cli.ingest import ingest
from services.cli.suite import Suite, free_base_port
from services.cli.training import train_and_publish
from services.common.clients import MAX_RECONNECT_BACKOFF_S
from services.datasets.loaders import Dataset, load_dataset
from services.ranker.checkpoints import latest_checkpoint
from services.ranker.training import TrainConfig

BACKENDS = ("preprocessor", "embedding", "retriever", "ranker")
# The backends each RPC cannot answer without (a failure while one of them is down is explained).
NEEDS: dict[str, frozenset[str]] = {
    "Recommend": frozenset(),
    "SearchItems": frozenset({"embedding", "retriever"}),
    "GetSimilarItems": frozenset({"retriever"}),
    "RecordEvents": frozenset({"retriever"}),
    "UpsertItems": frozenset({"preprocessor", "embedding", "retriever"}),
}
DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "amazon-scientific"


@dataclass
class Answer:
    rpc: str
    code: str
    degraded: bool
    ms: float
    down: tuple[str, ...]  # backends down (killed or not yet serving) at any time during the call


@dataclass
class Ledger:
    """Writes the gateway acknowledged, to audit afterwards."""

    events: list[tuple[str, str]] = field(default_factory=list)  # user, event id: acknowledged
    attempted: list[tuple[str, str]] = field(default_factory=list)  # every event sent, acknowledged or not
    items: list[str] = field(default_factory=list)
    # Answered Recommend pages whose impression must be recorded: recommendation id, page, shown items.
    pages: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=list)


class Outages:
    """Which backends are down now, and which were down at any time since a given moment. A backend counts as
    down until the gateway can reach it again: SERVING, plus the channels' reconnect backoff cap (their next
    attempt may be that far off; calls meanwhile fail fast with UNAVAILABLE)."""

    def __init__(self, reconnect_s: float = MAX_RECONNECT_BACKOFF_S) -> None:
        self._reconnect_s = reconnect_s
        self._log: list[tuple[float, float, str]] = []  # start, end (inf while down), backend

    def begin(self, name: str) -> None:
        self._log.append((time.monotonic(), float("inf"), name))

    def end(self, name: str) -> None:
        self._log = [(s, time.monotonic() if n == name and e == float("inf") else e, n) for s, e, n in self._log]

    def during(self, start: float, end: float) -> tuple[str, ...]:
        return tuple(sorted({n for s, e, n in self._log if s <= end and e + self._reconnect_s >= start}))


class Load:
    def __init__(self, channel: grpc.aio.Channel, dataset: Dataset, deadline_s: float, seed: int) -> None:
        self.stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.items = [item.item_id for item in dataset.items]
        self.users = sorted({i.user_id for i in dataset.interactions})
        self.deadline_s = deadline_s
        self.random = random.Random(seed)
        self.ledger = Ledger()
        self.answers: list[Answer] = []
        self._counter = 0

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    async def recommend(self) -> bool:
        query = self.random.choice(["", "", "glue", "sanding disc", "safety glasses", "multimeter"])
        request = pb.RecommendRequest(user_id=self.random.choice(self.users), k=10, query=query)
        response = await self.stub.Recommend(request, timeout=self.deadline_s)
        # A page from the gateway's cache (retriever down) or one it could not queue has no impression to audit.
        if response.items and not {"retriever", "impressions"} & set(response.degraded_stages):
            self.ledger.pages.append((response.recommendation_id, 1, tuple(i.item_id for i in response.items)))
        return bool(response.degraded)

    async def search(self) -> bool:
        request = pb.SearchItemsRequest(query=self.random.choice(["glue", "gloves", "tape", "ph meter"]), k=10)
        response = await self.stub.SearchItems(request, timeout=self.deadline_s)
        return bool(response.degraded)

    async def similar(self) -> bool:
        request = pb.GetSimilarItemsRequest(item_id=self.random.choice(self.items), k=10)
        await self.stub.GetSimilarItems(request, timeout=self.deadline_s)
        return False

    async def record(self) -> bool:
        # A fresh user per write keeps every history far below the retriever's cap, so the audit is exact.
        number = self._next()
        user, item, seconds = f"harness-user-{number}", self.random.choice(self.items), time.time() - 60
        moment = timestamp_pb2.Timestamp(seconds=int(seconds))
        event_id = f"harness-event-{number}"
        event = pb.Event(user_id=user, item_id=item, type=pb.EVENT_TYPE_CLICK, time=moment, event_id=event_id)
        request = pb.RecordEventsRequest(events=[event])
        self.ledger.attempted.append((user, event_id))
        try:
            await self.stub.RecordEvents(request, timeout=self.deadline_s)
        except grpc.aio.AioRpcError as error:
            # The first try may have been stored without its answer arriving: the retry must not count it again.
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            await self.stub.RecordEvents(request, timeout=self.deadline_s)
        self.ledger.events.append((user, event_id))
        return False

    async def upsert(self) -> bool:
        item_id = f"harness-item-{self._next()}"
        item = pb.CatalogItem(item_id=item_id, title=f"Harness test item {item_id}", categories=["Harness"])
        await self.stub.UpsertItems(pb.UpsertItemsRequest(items=[item]), timeout=self.deadline_s)
        self.ledger.items.append(item_id)
        return False

    def mix(self) -> list[tuple[str, Callable[[], Awaitable[bool]], int]]:
        return [
            ("Recommend", self.recommend, 50),
            ("SearchItems", self.search, 15),
            ("GetSimilarItems", self.similar, 5),
            ("RecordEvents", self.record, 20),
            ("UpsertItems", self.upsert, 10),
        ]

    async def worker(self, until: list[float], outages: Outages) -> None:
        mix = self.mix()
        weights = [weight for _, _, weight in mix]
        while time.monotonic() < until[0]:
            name, call, _ = self.random.choices(mix, weights)[0]
            started = time.monotonic()
            code, degraded = "OK", False
            try:
                degraded = await call()
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            ended = time.monotonic()
            self.answers.append(Answer(name, code, degraded, (ended - started) * 1000, outages.during(started, ended)))


async def chaos(
    suite: Suite, victims: list[str], duration_s: float, down_s: float, outages: Outages
) -> list[dict[str, Any]]:
    """Kills each victim once, spread evenly over the run; restarts it after `down_s`."""
    slot = duration_s / max(1, len(victims))
    started = time.monotonic()
    record: list[dict[str, Any]] = []
    for index, name in enumerate(victims):
        await asyncio.sleep(max(0.0, started + index * slot + min(1.0, slot / 4) - time.monotonic()))
        outages.begin(name)
        killed = time.monotonic()
        suite.processes[name].send_signal(signal.SIGKILL)
        await asyncio.to_thread(suite.processes[name].wait)
        await asyncio.sleep(down_s)
        suite.start_one(name)
        await asyncio.to_thread(suite.wait_until_serving, 120.0, (name,))
        outages.end(name)
        record.append({"backend": name, "down_s": round(time.monotonic() - killed, 2)})
    return record


async def audit(address: str, ledger: Ledger) -> dict[str, int]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        missing_items = 0
        for start in range(0, len(ledger.items), 256):
            wanted = ledger.items[start : start + 256]
            found = await stub.GetItems(retriever_pb2.GetItemsRequest(item_ids=wanted, skip_missing=True), timeout=30)
            missing_items += len(wanted) - len(found.items)
        acknowledged = set(ledger.events)
        missing_events = doubled_events = 0
        for user, event_id in ledger.attempted:
            try:
                profile = await stub.GetUserProfile(retriever_pb2.GetUserProfileRequest(user_id=user), timeout=30)
                copies = sum(e.event_id == event_id for e in profile.profile.events)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                copies = 0
            missing_events += copies == 0 and (user, event_id) in acknowledged
            doubled_events += max(0, copies - 1)
        missing_impressions = await _missing_impressions(stub, ledger.pages)
    return {
        "acknowledged_items": len(ledger.items),
        "missing_items": missing_items,
        "acknowledged_events": len(ledger.events),
        "unacknowledged_events": len(ledger.attempted) - len(ledger.events),
        "missing_events": missing_events,
        "doubled_events": doubled_events,
        "answered_pages": len(ledger.pages),
        "missing_impressions": missing_impressions,
    }


async def _missing_impressions(
    stub: retriever_pb2_grpc.RetrieverServiceStub, pages: list[tuple[str, int, tuple[str, ...]]], wait_s: float = 15
) -> int:
    """Answered pages whose impression is not recorded as shown, once the gateway's writer (which retries while
    a killed retriever restarts) had `wait_s` to finish."""
    deadline = time.monotonic() + wait_s
    while True:
        missing = 0
        for recommendation_id, page, items in pages:
            request = retriever_pb2.GetImpressionsRequest(recommendation_id=recommendation_id)
            try:
                found = await stub.GetImpressions(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                missing += 1
                continue
            missing += not any(i.page == page and tuple(i.item_ids) == items for i in found.impressions)
        if not missing or time.monotonic() > deadline:
            return missing
        await asyncio.sleep(1.0)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(answers: list[Answer], deadline_s: float) -> dict[str, Any]:
    accepted = {"OK", "RESOURCE_EXHAUSTED"}
    failures = [a for a in answers if a.code not in accepted and not (NEEDS[a.rpc] & set(a.down))]
    explained = [a for a in answers if a.code not in accepted and NEEDS[a.rpc] & set(a.down)]
    rows = []
    for rpc in NEEDS:
        mine = [a for a in answers if a.rpc == rpc]
        if not mine:
            continue
        latencies = [a.ms for a in mine]
        rows.append(
            {
                "rpc": rpc,
                "calls": len(mine),
                "ok": sum(a.code == "OK" and not a.degraded for a in mine),
                "ok_degraded": sum(a.code == "OK" and a.degraded for a in mine),
                "resource_exhausted": sum(a.code == "RESOURCE_EXHAUSTED" for a in mine),
                "explained_errors": dict(Counter(a.code for a in explained if a.rpc == rpc)),
                "failures": dict(Counter(a.code for a in failures if a.rpc == rpc)),
                "p50_ms": round(statistics.median(latencies), 1),
                "p99_ms": round(_percentile(latencies, 0.99), 1),
                "max_ms": round(max(latencies), 1),
            }
        )
    all_ms = [a.ms for a in answers]
    return {
        "rows": rows,
        "calls": len(answers),
        "failures": len(failures),
        "p50_ms": round(_percentile(all_ms, 0.5), 1),
        "p95_ms": round(_percentile(all_ms, 0.95), 1),
        "p99_ms": round(_percentile(all_ms, 0.99), 1),
        "deadline_ms": deadline_s * 1000,
        "degraded_by_stage_down": dict(
            Counter(",".join(a.down) or "none" for a in answers if a.code == "OK" and a.degraded)
        ),
    }


def print_table(report: dict[str, Any]) -> None:
    summary = report["summary"]
    print(f"\nmachine: {report['machine']}; {report['duration_s']} s at concurrency {report['concurrency']}; kills:")
    for kill in report["kills"]:
        print(f"  {kill['backend']}: down {kill['down_s']} s (SIGKILL, restart, until SERVING)")
    print(
        "\n| RPC | calls | OK | OK degraded | RESOURCE_EXHAUSTED | explained errors | failures | p50 ms | p99 ms "
        "| max ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in summary["rows"]:
        explained = ", ".join(f"{k} {v}" for k, v in row["explained_errors"].items()) or "0"
        failures = ", ".join(f"{k} {v}" for k, v in row["failures"].items()) or "0"
        print(
            f"| {row['rpc']} | {row['calls']} | {row['ok']} | {row['ok_degraded']} | {row['resource_exhausted']} | "
            f"{explained} | {failures} | {row['p50_ms']} | {row['p99_ms']} | {row['max_ms']} |"
        )
    audit_ = report["audit"]
    print(
        f"\nall calls: {summary['calls']}, p50 {summary['p50_ms']} ms, p95 {summary['p95_ms']} ms, "
        f"p99 {summary['p99_ms']} ms (deadline {summary['deadline_ms']:.0f} ms); failures {summary['failures']}"
    )
    print(f"degraded answers by backend down: {summary['degraded_by_stage_down']}")
    print(
        f"audit (exactly once): {audit_['acknowledged_events']} acknowledged events, {audit_['missing_events']} "
        f"missing, {audit_['doubled_events']} doubled ({audit_['unacknowledged_events']} sent without an answer); "
        f"{audit_['acknowledged_items']} acknowledged items, {audit_['missing_items']} missing; "
        f"{audit_['answered_pages']} answered pages, {audit_['missing_impressions']} without their impression"
    )


def prepare_state(state_dir: Path, dataset: Dataset, checkpoints_from: Path | None) -> None:
    target = state_dir / "checkpoints"
    if latest_checkpoint(target) is not None:
        return
    if checkpoints_from is not None and latest_checkpoint(checkpoints_from) is not None:
        shutil.copytree(checkpoints_from, target, dirs_exist_ok=True)
        return
    print("no ranker checkpoint: training one (once per state folder)", flush=True)
    train_and_publish(dataset, target, state_dir / "cache", TrainConfig(max_epochs=8, max_seconds=60))


async def run(args: argparse.Namespace, state_dir: Path) -> dict[str, Any]:
    dataset = load_dataset(args.data, limit_items=args.limit_items)
    prepare_state(state_dir, dataset, args.checkpoints_from)
    suite = Suite(free_base_port(42000), state_dir)
    suite.start()
    try:
        await asyncio.to_thread(suite.wait_until_serving)
        marker = state_dir / "qdrant" / f"loaded-{dataset.content_hash()[:16]}"
        if not marker.exists():
            with RecsysClient(suite.address("gateway")) as client:
                await asyncio.to_thread(ingest, client, dataset)
            marker.touch()
        outages = Outages()
        async with grpc.aio.insecure_channel(suite.address("gateway")) as channel:
            load = Load(channel, dataset, args.deadline, args.seed)
            await asyncio.sleep(1.0)  # the gateway's popular cache is filled right after warm-up
            started = time.monotonic()
            # The load runs for the duration, and on until the last killed backend serves again.
            until = [float("inf")]
            workers = [asyncio.create_task(load.worker(until, outages)) for _ in range(args.concurrency)]
            kills = await chaos(suite, args.kill, args.duration, args.down, outages)
            until[0] = max(started + args.duration, time.monotonic() + 1.0)
            await asyncio.gather(*workers)
            load_s = time.monotonic() - started
        report: dict[str, Any] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
            "duration_s": round(load_s, 1),
            "concurrency": args.concurrency,
            "deadline_s": args.deadline,
            "items": len(dataset.items),
            "kills": kills,
            "summary": summarise(load.answers, args.deadline),
            "audit": await audit(suite.address("retriever"), load.ledger),
            "answers_by_code": dict(Counter(a.code for a in load.answers)),
        }
        report["sample_failures"] = [
            asdict(a)
            for a in load.answers
            if a.code not in ("OK", "RESOURCE_EXHAUSTED") and not NEEDS[a.rpc] & set(a.down)
        ][:20]
        return report
    finally:
        suite.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder (any supported format)")
    parser.add_argument("--limit-items", type=int, default=400)
    parser.add_argument("--state-dir", type=Path, default=None, help="reused between runs; default: a temp folder")
    parser.add_argument("--checkpoints-from", type=Path, default=None, help="copy the ranker checkpoint from here")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent callers")
    parser.add_argument("--deadline", type=float, default=2.0, help="each call's deadline in seconds")
    parser.add_argument("--down", type=float, default=2.0, help="seconds a killed backend stays down")
    parser.add_argument("--kill", type=lambda s: [n for n in s.split(",") if n], default=list(BACKENDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args()
    unknown = set(args.kill) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"--kill names unknown backends {sorted(unknown)}; choose from {', '.join(BACKENDS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.state_dir is None:
        with tempfile.TemporaryDirectory(prefix="fault-harness-") as folder:
            report = asyncio.run(run(args, Path(folder)))
    else:
        report = asyncio.run(run(args, args.state_dir))
    print_table(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    summary, audited = report["summary"], report["audit"]
    broken = (
        summary["failures"]
        or audited["missing_events"]
        or audited["doubled_events"]
        or audited["missing_items"]
        or audited["missing_impressions"]
        or summary["p99_ms"] > summary["deadline_ms"]
    )
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
