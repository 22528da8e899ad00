"""One running suite for the integration tests: `recsys up` (the README's run command) as a subprocess on
free ports, with a few hundred real Amazon-Scientific items, stopped with Ctrl-C at the end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from services.cli.suite import METRICS_OFFSET, PORT_OFFSETS, free_base_port
from services.datasets.loaders import Dataset, load_dataset
from tests.conftest import SCIENTIFIC

LIMIT_ITEMS = 400


@dataclass
class RunningSuite:
    base_port: int
    state_dir: Path
    dataset: Dataset
    pids: dict[str, int]
    output: list[str]

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.base_port + PORT_OFFSETS[service]}"

    def metrics_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.base_port + PORT_OFFSETS[service] + METRICS_OFFSET}/metrics"


# An A/B experiment on a catalog of its own, so the other tests see the default catalog unchanged.
EXPERIMENT_CATALOG = "ab-test"
EXPERIMENTS = {
    "experiments": [
        {
            "name": "diversity-trial",
            "catalog": EXPERIMENT_CATALOG,
            "arms": [{"name": "control"}, {"name": "diverse", "settings": {"diversity": 0.5}}],
        }
    ]
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    if not SCIENTIFIC.is_dir():
        pytest.skip(f"the Amazon-Scientific data set is not at {SCIENTIFIC}")
    state_dir = tmp_path_factory.mktemp("suite")
    base_port = free_base_port()
    command = [
        sys.executable, "-m", "services.cli.main", "up",
        "--data", str(SCIENTIFIC), "--limit-items", str(LIMIT_ITEMS), "--state-dir", str(state_dir),
        "--port", str(base_port), "--epochs", "8", "--max-train-seconds", "60",
    ]  # fmt: skip
    stderr = (state_dir / "up.stderr").open("wb")
    experiments = state_dir / "experiments.json"
    experiments.write_text(json.dumps(EXPERIMENTS))
    environment = {**os.environ, "GATEWAY_EXPERIMENTS_FILE": str(experiments)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=environment)
    output: list[str] = []
    deadline = time.monotonic() + 900
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line.rstrip())
        if "serving until Ctrl-C" in line or time.monotonic() > deadline:
            break
    if process.poll() is not None or "serving until Ctrl-C" not in output[-1]:
        process.kill()
        tail = (state_dir / "up.stderr").read_text(errors="replace")[-3000:]
        raise RuntimeError("`recsys up` did not come up:\n" + "\n".join(output) + "\n" + tail)
    started = next(line for line in output if line.startswith("started "))
    pids = {name: int(pid) for name, pid in re.findall(r"(\w+) pid (\d+)", started)}
    dataset = load_dataset(SCIENTIFIC, limit_items=LIMIT_ITEMS)
    running = RunningSuite(base_port, state_dir, dataset, pids, output)
    yield running

    process.send_signal(signal.SIGINT)
    remaining, _ = process.communicate(timeout=60)
    stderr.close()
    assert process.returncode == 0, remaining
    assert "stopped: " in remaining
    leftover = [name for name, pid in pids.items() if _alive(pid)]
    assert not leftover, f"processes left behind after Ctrl-C: {leftover}"


@pytest.fixture(scope="session")
def gateway_channel(suite: RunningSuite) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(suite.address("gateway")) as channel:
        yield channel
