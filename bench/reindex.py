"""`recsys reindex` on the whole Amazon-Scientific catalog while Recommend keeps being called: how long the
reindex takes, how many items a second it embeds, and what Recommend's latency, errors and degraded answers are
before, during and after the switch, and after the rollback. Writes docs/results/reindex.json and a timeline plot
(docs/results/reindex.png).

    .venv/bin/python bench/reindex.py

The suite runs on its own state under var/bench/reindex/ (the catalog loaded through the gateway once, a ranker
trained once). The encoder rolled out to is the base model's weights published as an encoder version, and the
ranker model beside it is the base checkpoint's weights published as trained on that version: their vectors are
the base model's, so the checkpoint is trained on them. The reindex does the same work for it as for an adapted
encoder of the same architecture (every text embedded again, every item written, the switch); the cost of a
reindex does not depend on what the weights learned.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, RESULTS, SCIENTIFIC, machine, machine_line, median, percentile, table, write_json
from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from recsys_client import RecsysClient
from services.cli.ingest import ingest
from services.cli.reindex import Reindexer
from services.cli.suite import Suite, free_base_port
from services.cli.training import train_and_publish
from services.common.versions import publish, staging_folder, version_name
from services.datasets.loaders import load_dataset
from services.embedding.encoder import default_model_path
from services.embedding.versions import ENCODERS_DIR, list_versions, save_version
from services.ranker.checkpoints import (
    METADATA_FILE,
    MODEL_FILE,
    CheckpointMetadata,
    latest_checkpoint,
    list_checkpoints,
)
from services.ranker.training import TrainConfig

WORK = REPO / "var" / "bench" / "reindex"


@dataclass
class Call:
    started: float  # seconds since the benchmark's load began
    ms: float
    error: str
    degraded: bool
    model_version: str


def prepare(state: Path) -> tuple[str, str]:
    """A base checkpoint and, beside it, the rollout's encoder version and the checkpoint trained on it (once)."""
    dataset = load_dataset(SCIENTIFIC)
    checkpoints = state / "checkpoints"
    if latest_checkpoint(checkpoints) is None:
        print("training a ranker for the benchmark (once)")
        train_and_publish(dataset, checkpoints, state / "cache", TrainConfig(max_seconds=240))
    encoders = checkpoints / ENCODERS_DIR
    if not list_versions(encoders):
        from transformers import AutoModel, AutoTokenizer

        base = default_model_path()
        save_version(
            encoders,
            AutoModel.from_pretrained(base),
            AutoTokenizer.from_pretrained(base),
            base,
            base_model="sentence-transformers/all-MiniLM-L6-v2",
            dataset_name=dataset.name,
            dataset_hash=dataset.content_hash(),
            metrics={},
            tuning={"note": "the base weights, published as a version for bench/reindex.py"},
        )
    (encoder,) = list_versions(encoders)
    return encoder, _checkpoint_on(checkpoints, encoder)


def _checkpoint_on(checkpoints: Path, encoder: str) -> str:
    """The checkpoint trained on ``encoder``'s vectors: the base checkpoint's model republished as trained on it
    (the same vectors, so the same training), once."""
    described = {p.name: CheckpointMetadata.from_file(p / METADATA_FILE) for p in list_checkpoints(checkpoints)}
    for name, metadata in described.items():
        if metadata.encoder_version == encoder:
            return name
    base = next(name for name, metadata in described.items() if not metadata.encoder_version)
    created = datetime.now(UTC)
    with staging_folder(checkpoints) as tmp:
        shutil.copyfile(checkpoints / base / MODEL_FILE, tmp / MODEL_FILE)
        unnamed = replace(
            described[base],
            version="",
            created_at=created.isoformat(timespec="microseconds"),
            embedding_model_id=f"{described[base].embedding_model_id}@{encoder}",
            encoder_version=encoder,
        )
        version = version_name(created, tmp / MODEL_FILE, asdict(unnamed))
        (tmp / METADATA_FILE).write_text(
            json.dumps(asdict(replace(unnamed, version=version)), indent=2, sort_keys=True)
        )
        publish(tmp, checkpoints / version)
    return version


def call_in_a_loop(address: str, users: list[str], calls: list[Call], stop: threading.Event, t0: float) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        n = 0
        while not stop.is_set():
            user = users[n % len(users)]
            query = "digital multimeter" if n % 4 == 0 else ""
            n += 1
            started = time.perf_counter()
            try:
                answer = stub.Recommend(pb.RecommendRequest(user_id=user, k=10, query=query), timeout=30)
                outcome = ("", answer.degraded, answer.model_version)
            except grpc.RpcError as error:
                outcome = (f"{error.code().name}: {error.details()}", False, "")
            calls.append(Call(started - t0, 1000 * (time.perf_counter() - started), *outcome))


def phase_row(name: str, calls: list[Call]) -> dict[str, Any]:
    latencies = [c.ms for c in calls if not c.error]
    span = (calls[-1].started - calls[0].started) if len(calls) > 1 else float("nan")
    return {
        "phase": name,
        "calls": len(calls),
        "calls_per_s": len(calls) / span if span else float("nan"),
        "p50_ms": median(latencies),
        "p99_ms": percentile(latencies, 99),
        "errors": sum(1 for c in calls if c.error),
        "degraded": sum(1 for c in calls if c.degraded),
        "model_versions": sorted({c.model_version for c in calls if c.model_version}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="callers of Recommend during the run")
    parser.add_argument("--settle-s", type=float, default=20.0, help="seconds of load before and after each step")
    parser.add_argument("--fresh", action="store_true", help="start from an empty state folder")
    parser.add_argument("--batch", type=int, default=64, help="items embedded per call (recsys reindex --batch)")
    parser.add_argument("--name", default="reindex", help="results file name under docs/results/")
    args = parser.parse_args()
    if args.fresh and WORK.exists():
        shutil.rmtree(WORK)
    info = machine()
    encoder, adapted_model = prepare(WORK)
    dataset = load_dataset(SCIENTIFIC)
    suite = Suite(free_base_port(), WORK)
    suite.start()
    phases: dict[str, tuple[float, float]] = {}
    calls: list[Call] = []
    stop = threading.Event()
    try:
        suite.wait_until_serving(600)
        loaded = WORK / "qdrant" / "loaded"
        if not loaded.exists():
            with RecsysClient(suite.address("gateway")) as client:
                ingest(client, dataset)
            loaded.touch()
        users = sorted(dataset.sequences())[:200]
        t0 = time.perf_counter()
        threads = [
            threading.Thread(target=call_in_a_loop, args=(suite.address("gateway"), users, calls, stop, t0))
            for _ in range(args.threads)
        ]
        for thread in threads:
            thread.start()
        channels = {
            name: grpc.insecure_channel(suite.address(name))
            for name in ("retriever", "embedding", "ranker", "preprocessor")
        }

        def step(name: str, work: Any) -> Any:
            begun = time.perf_counter() - t0
            result = work()
            phases[name] = (begun, time.perf_counter() - t0)
            time.sleep(args.settle_s)
            return result

        time.sleep(args.settle_s)
        phases["before"] = (0.0, time.perf_counter() - t0)
        rollout = step("reindex", Reindexer(channels, "", encoder, batch=args.batch).run)
        rollback = step("rollback", Reindexer(channels, "", "").run)
        step("drop", Reindexer(channels, "", encoder).drop)
        stop.set()
        for thread in threads:
            thread.join()
        for channel in channels.values():
            channel.close()
    finally:
        stop.set()
        suite.stop()
    ends = sorted(phases.values())
    windows = {
        "before": phases["before"],
        "during reindex": phases["reindex"],
        "after switch": (phases["reindex"][1], phases["rollback"][0]),
        "during rollback": phases["rollback"],
        "after rollback": (phases["rollback"][1], phases["drop"][0]),
    }
    rows = [phase_row(name, [c for c in calls if lo <= c.started < hi]) for name, (lo, hi) in windows.items()]
    document = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "bench/reindex.py " + " ".join(sys.argv[1:]),
        "machine": info,
        "items": rollout.items,
        "encoder": encoder,
        "batch": args.batch,
        "adapted_model": adapted_model,
        "reindex": {**asdict(rollout), "items_per_s": rollout.items / rollout.seconds},
        "rollback": asdict(rollback),
        "phases": rows,
        "errors": sorted({c.error for c in calls if c.error}),
        "windows": {k: list(v) for k, v in windows.items()},
        "span_s": ends[-1][1],
    }
    path = write_json(args.name, document)
    print(machine_line(info))
    print(
        f"reindex of {rollout.items} items: {rollout.seconds:.1f} s ({rollout.items / rollout.seconds:.0f} items/s, "
        f"{len(rollout.rounds)} rounds); rollback {rollback.seconds:.1f} s"
    )
    headers = ["phase", "calls", "calls/s", "p50 ms", "p99 ms", "errors", "degraded", "model versions"]
    print(
        table(
            headers,
            [
                [r[h] for h in ("phase", "calls", "calls_per_s", "p50_ms", "p99_ms", "errors", "degraded")]
                + [", ".join(r["model_versions"])]
                for r in rows
            ],
        )
    )
    print(f"wrote {path} and {plot(calls, windows, RESULTS / f'{args.name}.png')}")


def plot(calls: list[Call], windows: dict[str, tuple[float, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(11, 4))
    answered = [c for c in calls if not c.error]
    axis.scatter([c.started for c in answered], [c.ms for c in answered], s=4, alpha=0.5, label="Recommend")
    failed = [c for c in calls if c.error]
    if failed:
        axis.scatter([c.started for c in failed], [1.0] * len(failed), s=12, color="red", label="error")
    for name, color in (("during reindex", "tab:orange"), ("during rollback", "tab:green")):
        lo, hi = windows[name]
        axis.axvspan(lo, hi, alpha=0.15, color=color, label=name)
    axis.set_yscale("log")
    axis.set_xlabel("seconds")
    axis.set_ylabel("Recommend latency ms")
    axis.set_title("Recommend through a reindex, its switch and a rollback (Amazon-Scientific, 2-core machine)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
