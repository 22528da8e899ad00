"""The supervisor's decisions on a fake suite and a fake clock: when it restarts, how the backoff grows, when the
window forgets old restarts and when it gives up (the real processes: tests/integration/test_supervisor.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from services.cli.suite import GaveUp, RestartPolicy, Suite, Supervisor, exit_description


@dataclass
class FakeProcess:
    pid: int
    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


@dataclass
class FakeSuite:
    log_dir: Path
    processes: dict[str, FakeProcess] = field(default_factory=lambda: {"ranker": FakeProcess(100)})
    serving: bool = True
    starts: int = 0

    def start_one(self, name: str) -> None:
        self.starts += 1
        self.processes[name] = FakeProcess(100 + self.starts)

    def is_serving(self, name: str) -> bool:
        return self.serving

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def tail(self, name: str) -> str:
        return "Traceback: the last words"


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def _supervisor(tmp_path: Path, policy: RestartPolicy) -> tuple[Supervisor, FakeSuite, Clock, list[str]]:
    suite, clock, said = FakeSuite(tmp_path), Clock(), []
    return Supervisor(cast(Suite, suite), policy, say=said.append, clock=clock), suite, clock, said


def test_a_dead_service_restarts_after_a_doubling_backoff_and_is_reported_serving(tmp_path: Path) -> None:
    supervisor, suite, clock, said = _supervisor(tmp_path, RestartPolicy(max_restarts=5, first_backoff_s=0.5))
    backoffs = []
    for _ in range(3):
        suite.processes["ranker"].returncode = -9
        supervisor.check()
        assert "killed by SIGKILL; restarting in" in said[-1]
        backoffs.append(float(said[-1].split("restarting in ")[1].split(" s")[0]))
        started = suite.starts
        clock.now += backoffs[-1] - 0.01
        supervisor.check()
        assert suite.starts == started, "restarted before its backoff was over"
        clock.now += 0.02
        supervisor.check()
        assert suite.starts == started + 1 and "restarted as pid" in said[-1]
        supervisor.check()
        assert "ranker is SERVING again" in said[-1]
    assert backoffs == [0.5, 1.0, 2.0]
    assert "ranker is SERVING again" in suite.log_path("ranker").read_text()


def test_it_gives_up_past_max_restarts_within_the_window_and_forgets_older_ones(tmp_path: Path) -> None:
    policy = RestartPolicy(max_restarts=2, window_s=60.0, first_backoff_s=1.0)
    supervisor, suite, clock, said = _supervisor(tmp_path, policy)

    def die_and_restart() -> None:
        suite.processes["ranker"].returncode = 1
        supervisor.check()
        clock.now += 10.0
        supervisor.check()

    die_and_restart()
    die_and_restart()
    clock.now += 61.0  # both restarts leave the window
    die_and_restart()
    die_and_restart()
    suite.processes["ranker"].returncode = 1
    with pytest.raises(GaveUp, match=r"(?s)ranker exited 3 times within 60 s .*Traceback: the last words"):
        supervisor.check()
    assert said[-1].endswith("ranker (pid 104) exited: exit code 1; giving up")


def test_exit_descriptions() -> None:
    assert exit_description(-15) == "killed by SIGTERM"
    assert exit_description(2) == "exit code 2"
