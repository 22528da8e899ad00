"""Proto conventions (versioned packages, Service suffix, unique request/response per RPC, enums with an
UNSPECIFIED zero, every element documented) and freshness of the committed generated code."""

from __future__ import annotations

import filecmp
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from generate_protos import PROTO_ROOT, generate, proto_files

PROTOS = proto_files(PROTO_ROOT)


def test_every_service_has_a_proto() -> None:
    names = {p.relative_to(PROTO_ROOT).parts[1] for p in PROTOS}
    assert names == {"preprocessor", "embedding", "retriever", "ranker", "gateway"}


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    generate(PROTO_ROOT, tmp_path)
    for proto in PROTOS:
        relative = proto.relative_to(PROTO_ROOT).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            fresh = tmp_path / f"{relative}{suffix}"
            committed = PROTO_ROOT / f"{relative}{suffix}"
            assert committed.is_file(), f"{committed} is missing: run python scripts/generate_protos.py"
            assert filecmp.cmp(fresh, committed, shallow=False), (
                f"{committed} is stale: run python scripts/generate_protos.py and commit the result"
            )


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.parent.parent.name)
def test_package_matches_folder(proto: Path) -> None:
    text = proto.read_text()
    expected = ".".join(proto.relative_to(PROTO_ROOT).parent.parts)
    assert re.search(rf"^package {re.escape(expected)};$", text, re.M), f"{proto}: package must be {expected}"
    assert re.fullmatch(r"v\d+", proto.parent.name)


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.parent.parent.name)
def test_rpc_naming(proto: Path) -> None:
    text = proto.read_text()
    services = re.findall(r"^service (\w+)", text, re.M)
    assert len(services) == 1 and services[0].endswith("Service")
    rpcs = re.findall(r"rpc (\w+)\((\w+)\) returns \((\w+)\)", text)
    assert rpcs
    for name, request, response in rpcs:
        assert (request, response) == (f"{name}Request", f"{name}Response"), name


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.parent.parent.name)
def test_enums_start_unspecified(proto: Path) -> None:
    text = proto.read_text()
    for enum, body in re.findall(r"^enum (\w+) \{(.*?)^\}", text, re.M | re.S):
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum).upper()
        first = re.search(r"(\w+) = (\d+);", body)
        assert first and first.group(1) == f"{prefix}_UNSPECIFIED" and first.group(2) == "0", enum
        for value in re.findall(r"(\w+) = \d+;", body):
            assert value.startswith(prefix + "_"), value


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.parent.parent.name)
def test_everything_is_documented(proto: Path) -> None:
    lines = proto.read_text().splitlines()
    element = re.compile(r"^\s*(service |rpc |message |enum |(optional |repeated )?[\w.<>, ]+ \w+ = \d+;|\w+ = \d+;)")
    for number, line in enumerate(lines):
        if element.match(line) and not line.strip().startswith("//"):
            previous = lines[number - 1].strip() if number else ""
            assert previous.startswith("//"), f"{proto.name}:{number + 1} lacks a // comment: {line.strip()}"
