"""`make run` as an operator meets it: each service killed with SIGKILL in turn is restarted while the others keep
serving (Recommend answers throughout, degraded at most, and is whole again soon after); a service that keeps
dying makes `make run` exit non-zero; a SIGTERM to the make process alone stops the whole suite. Runs its own
small suite (60 items, no checkpoint: the first run's training lines are checked too) through the Makefile's
`run` target."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2

from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.cli.suite import PORT_OFFSETS, SERVICES, free_base_port
from services.datasets.loaders import load_dataset
from tests.conftest import REPO_ROOT, SCIENTIFIC

LIMIT_ITEMS = 60
VENV = Path(sys.prefix)
# Generous for a loaded 2-core CI machine; on an idle one a killed service serves again within seconds.
RECOVERY_S = 180.0
START_S = 900.0


@dataclass
class MakeRun:
    """`make run` in its own session (so a signal reaches only what the test means), its output read as it comes."""

    process: subprocess.Popen[str]
    base_port: int
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    reader: threading.Thread | None = None

    def start_reading(self) -> None:
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip())
                self.changed.notify_all()

    def finish(self, timeout_s: float) -> int:
        """Waits for `make run` to exit and for the last of its output; returns its exit status."""
        code = self.process.wait(timeout=timeout_s)
        assert self.reader is not None
        self.reader.join(timeout=10)
        return code

    def wait_for(self, pattern: str, timeout_s: float, after: int = 0) -> re.Match[str]:
        """The first line from index `after` on that matches `pattern`."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while True:
                for line in self.lines[after:]:
                    if found := re.search(pattern, line):
                        return found
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"no line matching {pattern!r}; `make run` printed:\n" + self.output())
                self.changed.wait(0.5)

    def output(self) -> str:
        return "\n".join(self.lines)[-6000:]

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.base_port + PORT_OFFSETS[service]}"

    def pids(self) -> dict[str, int]:
        started = self.wait_for(r"^started (.*)", 0)
        return {name: int(pid) for name, pid in re.findall(r"(\w+) pid (\d+)", started.group(1))}


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[MakeRun]:
    if not SCIENTIFIC.is_dir():
        pytest.skip(f"the Amazon-Scientific data set is not at {SCIENTIFIC}")
    if not (VENV / ".installed").exists():
        pytest.skip(f"the tests do not run from the Makefile's virtualenv ({VENV}/.installed is missing)")
    base_port = free_base_port(43000)
    # The data under ~, as operators write paths: make runs such a recipe through sh (which expands the ~), and
    # that shell is where a SIGTERM to make used to end while recsys and the services ran on.
    home = tmp_path / "home"
    home.mkdir()
    (home / "amazon-scientific").symlink_to(SCIENTIFIC)
    args = (
        f"--data ~/amazon-scientific --limit-items {LIMIT_ITEMS} --state-dir {tmp_path / 'state'} "
        f"--port {base_port} --epochs 2 --max-train-seconds 20 --max-restarts 2 --restart-window 1800"
    )
    # -o: the virtualenv counts as installed even when pyproject.toml is newer (this tests `run`, not the install).
    command = ["make", "-s", "-C", str(REPO_ROOT), "-o", f"{VENV}/.installed", "run", f"VENV={VENV}", f"ARGS={args}"]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "HOME": str(home)}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, start_new_session=True
    )
    run = MakeRun(process, base_port)
    run.start_reading()
    try:
        run.wait_for("serving until Ctrl-C", START_S)
        yield run
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        for pid in _pids_seen(run):
            _kill_if_alive(pid)


def _pids_seen(run: MakeRun) -> list[int]:
    return [int(pid) for line in run.lines for pid in re.findall(r"\bpid (\d+)", line)]


def _kill_if_alive(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running: not gone, and not a zombie (exited, not yet reaped by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Writer:
    """RecordEvents, each event with its own timestamp; keeps what the gateway acknowledged. A new user every
    100 events, since a profile keeps only its newest RETRIEVER_MAX_HISTORY (200) events."""

    stub: gateway_pb2_grpc.GatewayServiceStub
    item: str
    next_second: int = field(default_factory=lambda: int(time.time()) - 86_400)
    acknowledged: list[tuple[str, float]] = field(default_factory=list)  # user, timestamp

    def write(self) -> None:
        self.next_second += 1
        user = f"supervised-writer-{len(self.acknowledged) // 100}"
        stamp = timestamp_pb2.Timestamp(seconds=self.next_second)
        event = pb.Event(user_id=user, item_id=self.item, type=pb.EVENT_TYPE_VIEW, time=stamp)
        try:
            self.stub.RecordEvents(pb.RecordEventsRequest(events=[event]), timeout=5)
        except grpc.RpcError:
            return  # not acknowledged: the caller would retry; nothing to audit
        self.acknowledged.append((user, float(self.next_second)))

    def lost(self, retriever: retriever_pb2_grpc.RetrieverServiceStub) -> list[tuple[str, float]]:
        stored: set[tuple[str, float]] = set()
        for user in {user for user, _ in self.acknowledged}:
            profile = retriever.GetUserProfile(retriever_pb2.GetUserProfileRequest(user_id=user), timeout=30)
            stored |= {(user, event.timestamp) for event in profile.profile.events if event.item_id == self.item}
        return [event for event in self.acknowledged if event not in stored]


def test_each_killed_service_is_restarted_and_one_that_keeps_dying_stops_make_run(
    make_run: MakeRun, tmp_path: Path
) -> None:
    # A first run (no checkpoint) says that it trains within a budget and which command trains the full model.
    make_run.wait_for(r"^no ranker checkpoint yet: training a first one with a budget of 20 s of epochs", 0)
    data, state = tmp_path / "home" / "amazon-scientific", tmp_path / "state"
    make_run.wait_for(
        rf"^  \.venv/bin/recsys train --data {re.escape(str(data))} --state-dir {re.escape(str(state))}$", 0
    )
    dataset = load_dataset(SCIENTIFIC, limit_items=LIMIT_ITEMS)
    sequences = dataset.sequences()
    user = max(sequences, key=lambda u: (len(sequences[u]), u))
    pids = make_run.pids()
    with grpc.insecure_channel(make_run.address("gateway")) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        writer = Writer(gateway, dataset.items[0].item_id)
        writer.write()
        assert writer.acknowledged, "the suite did not take a write before any kill"
        recovery: dict[str, float] = {}
        for name in SERVICES:
            printed_before = len(make_run.lines)
            killed = time.monotonic()
            os.kill(pids[name], signal.SIGKILL)
            codes: list[str] = []
            while True:
                writer.write()
                try:
                    response = gateway.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=5)
                    codes.append("OK degraded" if response.degraded else "OK")
                except grpc.RpcError as error:
                    codes.append(error.code().name)
                if codes[-1] == "OK" and _printed(make_run, f"recsys up: {name} is SERVING again", printed_before):
                    break
                assert time.monotonic() - killed < RECOVERY_S, f"{name}: Recommend answered {codes[-20:]}"
                time.sleep(0.2)
            recovery[name] = time.monotonic() - killed
            pids[name] = _restarted_pid(make_run, name, printed_before)
            assert _alive(pids[name])
            # The gateway cannot answer while it is itself down; while a backend is down it answers, degraded.
            allowed = {"OK", "OK degraded"} | ({"UNAVAILABLE"} if name == "gateway" else set())
            assert set(codes) <= allowed, f"{name} down: Recommend answered {codes}"
            make_run.wait_for(
                rf"recsys up: {name} \(pid \d+\) exited: killed by SIGKILL; restarting", 0, printed_before
            )
        print("seconds from SIGKILL to a whole Recommend answer:", {k: round(v, 1) for k, v in recovery.items()})

        writer.write()
        with grpc.insecure_channel(make_run.address("retriever")) as retriever_channel:
            retriever = retriever_pb2_grpc.RetrieverServiceStub(retriever_channel)
            lost = writer.lost(retriever)
        assert not lost, f"{len(lost)} of {len(writer.acknowledged)} acknowledged events lost: {lost[:5]}"

    # --max-restarts 2: the ranker's second restart is allowed, its third exit within the window is not.
    printed_before = len(make_run.lines)
    os.kill(pids["ranker"], signal.SIGKILL)
    make_run.wait_for(r"recsys up: ranker restarted as pid", RECOVERY_S, printed_before)
    os.kill(_restarted_pid(make_run, "ranker", printed_before), signal.SIGKILL)
    code = make_run.finish(timeout_s=120)
    output = make_run.output()
    assert "giving up: ranker exited 3 times" in output
    assert "stopped: " in output
    assert code != 0
    assert re.search(r"\[.*run\] Error 3", output), output
    running = [pid for pid in _pids_seen(make_run) if _alive(pid)]
    assert not running, f"processes left behind after giving up: {running}"


def _printed(run: MakeRun, text: str, after: int) -> bool:
    with run.changed:
        return any(text in line for line in run.lines[after:])


def _restarted_pid(run: MakeRun, name: str, after: int) -> int:
    """The pid of `name`'s latest restart printed after line `after`; 0 when none yet."""
    with run.changed:
        found = [re.search(rf"recsys up: {name} restarted as pid (\d+)", line) for line in run.lines[after:]]
    pids = [int(match.group(1)) for match in found if match]
    return pids[-1] if pids else 0


def test_sigterm_to_make_alone_stops_the_suite(make_run: MakeRun) -> None:
    pids = make_run.pids()
    os.kill(make_run.process.pid, signal.SIGTERM)  # the make process only, as a process manager would
    make_run.finish(timeout_s=120)
    output = make_run.output()
    assert "SIGTERM received" in output
    assert "stopped: " in output
    running = [name for name, pid in pids.items() if _alive(pid)]
    assert not running, f"services left running after SIGTERM to make: {running}"
