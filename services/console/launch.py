"""Starts the console beside a local suite (`recsys up`): one more process, on the gateway's port + 5."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from services.cli.suite import Suite

CONSOLE_PORT_OFFSET = 5


def console_environment(suite: Suite) -> dict[str, str]:
    """The console's settings for a local suite: every service's address, and the gateway's token and
    experiments file when the caller's environment sets them."""
    env = {
        "CONSOLE_PORT": str(suite.base_port + CONSOLE_PORT_OFFSET),
        **{f"CONSOLE_{name.upper()}_ADDRESS": suite.address(name) for name in suite.processes},
    }
    for gateway_name, console_name in (
        ("GATEWAY_AUTH_TOKEN", "CONSOLE_AUTH_TOKEN"),
        ("GATEWAY_EXPERIMENTS_FILE", "CONSOLE_EXPERIMENTS_FILE"),
    ):
        if os.environ.get(gateway_name) and console_name not in os.environ:
            env[console_name] = os.environ[gateway_name]
    return env


@dataclass(frozen=True)
class RunningConsole:
    process: subprocess.Popen[bytes]
    url: str

    def stop(self, timeout_s: float = 10.0) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_console(suite: Suite, timeout_s: float = 60.0) -> RunningConsole | None:
    """Starts the console and waits until it answers /healthz; None, and says why, when its optional web stack
    is not installed."""
    missing = [name for name in ("fastapi", "uvicorn", "jinja2") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"operator console not started: {', '.join(missing)} missing; pip install -e '.[console]'", flush=True)
        return None
    env = {**os.environ, **console_environment(suite)}
    log = suite.log_path("console").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.console"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{env['CONSOLE_PORT']}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the console exited with code {process.returncode}; see {suite.log_path('console')}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return RunningConsole(process, url)
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"the console did not answer within {timeout_s:.0f} s; see {suite.log_path('console')}")
