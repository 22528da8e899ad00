"""Runs the five services as separate processes on local ports, restarts one that dies, and stops them cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.embedding.versions import ENCODERS_DIR

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
    # Where `recsys train` writes adapted encoders, so `recsys reindex --encoder VERSION` can embed with one.
    env["EMBEDDING_ENCODER_DIR"] = str(state_dir / "checkpoints" / ENCODERS_DIR)
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
    _logs: dict[str, IO[bytes]] = field(default_factory=dict)

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
        if name in self._logs:
            self._logs[name].close()
        log = self._logs[name] = self.log_path(name).open("ab")
        # Each service in its own process group, so Ctrl-C in the terminal reaches only this launcher,
        # which then stops them in order.
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_until_serving(
        self,
        timeout_s: float = 300.0,
        names: Sequence[str] = SERVICES,
        on_serving: Callable[[str], None] = lambda name: None,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        for name in names:
            while not self.is_serving(name):
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
                time.sleep(0.2)
            on_serving(name)

    def is_serving(self, name: str) -> bool:
        """Whether the service's health says SERVING for its full name now (one check, at most a second)."""
        with grpc.insecure_channel(self.address(name)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=FULL_NAMES[name]), timeout=1)
            except grpc.RpcError:
                return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

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
        for log in self._logs.values():
            log.close()
        return codes


@dataclass(frozen=True)
class RestartPolicy:
    """What `recsys up` does when a service exits, as a process supervisor (or a Kubernetes pod's restart policy)
    would: start it again after a backoff that doubles with each restart in the window, and give up when a service
    needs more than max_restarts within window_s (it cannot stay up; a crash loop helps nobody)."""

    max_restarts: int = 5
    window_s: float = 300.0
    first_backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def backoff_s(self, recent_restarts: int) -> float:
        return min(self.max_backoff_s, self.first_backoff_s * 2.0**recent_restarts)


class GaveUp(Exception):
    """A service exited more often than the restart policy allows."""


def exit_description(code: int) -> str:
    """How a process ended, in words: 'exit code 1' or 'killed by SIGKILL'."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Supervisor:
    """Keeps the suite's services running: call check() every half second or so. A service that exits is
    reported, started again after its backoff (the others keep serving; the gateway answers degraded meanwhile),
    and reported again once it is SERVING. Each event goes to `say` (the terminal) and into the service's own log,
    so its log shows where one run ended and the next began."""

    suite: Suite
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    say: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    _restarts: dict[str, deque[float]] = field(default_factory=dict)  # when each service was restarted
    _due: dict[str, float] = field(default_factory=dict)  # exited services: when to start them again
    _down_since: dict[str, float] = field(default_factory=dict)  # exited or restarted, not yet SERVING again

    def check(self) -> None:
        """One pass: notice exits, start those whose backoff is over, report those SERVING again. Raises GaveUp."""
        now = self.clock()
        for name, process in list(self.suite.processes.items()):
            if name in self._due:
                if now >= self._due[name]:
                    del self._due[name]
                    self._restart(name, now)
            elif process.poll() is not None:
                self._exited(name, process.returncode, now)
            elif name in self._down_since and self.suite.is_serving(name):
                self._record(name, f"{name} is SERVING again, {now - self._down_since.pop(name):.1f} s after it exited")

    def _exited(self, name: str, code: int, now: float) -> None:
        restarts = self._restarts.setdefault(name, deque())
        while restarts and now - restarts[0] > self.policy.window_s:
            restarts.popleft()
        self._down_since.setdefault(name, now)
        what = f"{name} (pid {self.suite.processes[name].pid}) exited: {exit_description(code)}"
        if len(restarts) >= self.policy.max_restarts:
            self._record(name, f"{what}; giving up")
            raise GaveUp(
                f"{name} exited {len(restarts) + 1} times within {self.policy.window_s:.0f} s (at most "
                f"{self.policy.max_restarts} restarts allowed); its log {self.suite.log_path(name)} ends with:\n"
                f"{self.suite.tail(name)}"
            )
        backoff = self.policy.backoff_s(len(restarts))
        self._due[name] = now + backoff
        self._record(
            name,
            f"{what}; restarting in {backoff:.1f} s (restart {len(restarts) + 1} of {self.policy.max_restarts} "
            f"allowed within {self.policy.window_s:.0f} s); the other services keep serving",
        )

    def _restart(self, name: str, now: float) -> None:
        self._restarts[name].append(now)
        self.suite.start_one(name)
        self._record(name, f"{name} restarted as pid {self.suite.processes[name].pid}")

    def _record(self, name: str, message: str) -> None:
        line = f"{datetime.now(UTC).isoformat(timespec='seconds')} recsys up: {message}"
        self.say(line)
        with self.suite.log_path(name).open("a") as log:
            log.write(line + "\n")
