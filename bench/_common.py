"""What every benchmark here shares: the machine it ran on, percentiles, a Markdown table, the JSON it writes
under docs/results/, and Amazon-Scientific item texts built the way the preprocessor builds them."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
SCIENTIFIC = REPO.parent / "shared" / "data" / "amazon-scientific"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine() -> dict[str, Any]:
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_flags": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "shared_machine_note": "shared machine; medians of repeated runs, compare rows from the same run only",
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def machine_line(info: Mapping[str, Any]) -> str:
    return (
        f"machine: {info['cpu']}, {info['cores']} cores ({', '.join(info['cpu_flags'])}), Python {info['python']}; "
        f"load average at start {info['load_average_at_start']} (shared machine)"
    )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.5f}" if abs(value) < 1 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, data: Mapping[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def item_texts(data: Path = SCIENTIFIC, limit: int | None = None) -> list[str]:
    """The catalog texts the gateway would send the embedding service (preprocessor's build_item_text)."""
    from services.cli.training import item_texts as build
    from services.datasets.loaders import load_dataset

    return build(load_dataset(data, limit_items=limit).items)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def service_process(name: str, env: Mapping[str, str], log: Path, timeout_s: float = 180) -> Iterator[int]:
    """Runs `python -m services.<name>` on a free port until SERVING; yields the port; SIGTERM at the end."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.cli.suite import FULL_NAMES

    port = free_port()
    full_env = {
        **os.environ,
        **OFFLINE,
        "TOKENIZERS_PARALLELISM": "false",
        f"{name.upper()}_PORT": str(port),
        f"{name.upper()}_METRICS_PORT": "0",
        **env,
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
        try:
            deadline = time.monotonic() + timeout_s
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    if process.poll() is not None:
                        raise RuntimeError(f"{name} exited with {process.returncode}; see {log}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{name} not SERVING after {timeout_s} s; see {log}")
                    try:
                        status = stub.Check(health_pb2.HealthCheckRequest(service=FULL_NAMES[name]), timeout=1)
                        if status.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    time.sleep(0.2)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
