"""Runs the five services as separate processes on local ports and stops them cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Start order: the gateway last, since it waits for the others.
SERVICES = ("preprocessor", "embedding", "retriever", "ranker", "gateway")
PORT_OFFSETS = {"gateway": 0, "preprocessor": 1, "embedding": 2, "retriever": 3, "ranker": 4}
FULL_NAMES = {
    "preprocessor": "recsys.preprocessor.v1.PreprocessorService",
    "embedding": "recsys.embedding.v1.EmbeddingService",
    "retriever": "recsys.retriever.v1.RetrieverService",
    "ranker": "recsys.ranker.v1.RankerService",
    "gateway": "recsys.gateway.v1.GatewayService",
}

METRICS_OFFSET = 1000  # a service's default metrics port is its gRPC port + 1000


def free_base_port(start: int = 41000) -> int:
    """A base port P whose suite ports (P..P+4) and their metrics ports (+ METRICS_OFFSET) are all free, for
    tests and benchmarks that run their own suite beside others."""
    for base in range(start, 60000, 10):
        sockets = []
        try:
            for port in (base + offset + metrics for offset in range(5) for metrics in (0, METRICS_OFFSET)):
                listener = socket.socket()
                sockets.append(listener)
                listener.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for listener in sockets:
                listener.close()
    raise RuntimeError("no five consecutive free ports (and their metrics ports) between 41000 and 60000")


def suite_environment(base_port: int, state_dir: Path) -> dict[str, str]:
    """Every service's settings for one machine: fixed ports from base_port, data under state_dir."""
    ports = {name: base_port + offset for name, offset in PORT_OFFSETS.items()}
    env = {f"{name.upper()}_PORT": str(port) for name, port in ports.items()}
    for backend in ("preprocessor", "embedding", "retriever", "ranker"):
        env[f"GATEWAY_{backend.upper()}_ADDRESS"] = f"127.0.0.1:{ports[backend]}"
    env["RETRIEVER_DATA_DIR"] = str(state_dir / "qdrant")
    env["RANKER_CHECKPOINT_DIR"] = str(state_dir / "checkpoints")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    # Two cores shared by five processes: one torch thread each keeps them from fighting (the embedding service
    # defaults to cores - 1 threads; EMBEDDING_TORCH_THREADS in the caller's environment still passes through).
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@dataclass
class Suite:
    base_port: int
    state_dir: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def port(self, name: str) -> int:
        return self.base_port + PORT_OFFSETS[name]

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.port(name)}"

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def start(self) -> None:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        for name in SERVICES:
            self.start_one(name)

    def start_one(self, name: str) -> None:
        """Starts one service (again, after it died or was killed) with the suite's settings."""
        env = {**os.environ, **suite_environment(self.base_port, self.state_dir), **self.extra_env}
        log = self.log_path(name).open("ab")
        self._logs.append(log)
        # Each service in its own process group, so Ctrl-C in the terminal reaches only this launcher,
        # which then stops them in order.
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_until_serving(self, timeout_s: float = 300.0, names: Sequence[str] = SERVICES) -> None:
        deadline = time.monotonic() + timeout_s
        for name in names:
            with grpc.insecure_channel(self.address(name)) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    process = self.processes[name]
                    if process.poll() is not None:
                        raise RuntimeError(
                            f"the {name} service exited with code {process.returncode}; its log "
                            f"{self.log_path(name)} ends with:\n{self.tail(name)}"
                        )
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"the {name} service did not report SERVING within {timeout_s:.0f} s; see "
                            f"{self.log_path(name)}:\n{self.tail(name)}"
                        )
                    try:
                        response = stub.Check(health_pb2.HealthCheckRequest(service=FULL_NAMES[name]), timeout=1)
                        if response.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    time.sleep(0.2)

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.log_path(name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, timeout_s: float = 20.0) -> dict[str, int | None]:
        """SIGTERM to all (each drains in-flight calls), then SIGKILL whatever is left after the timeout."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        for log in self._logs:
            log.close()
        return codes
