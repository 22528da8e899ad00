"""Packs what `bench/gpu_embedding.py` needs on a lent GPU machine that reaches no network, into `.gpu/`:

- wheels, for that machine's Python, of the packages the embedding service needs beyond what its image holds
  (the image brings CUDA torch, transformers, tokenizers, sentence-transformers, numpy and prometheus-client; the
  gRPC, protobuf, settings, logging and telemetry stack comes from here, at the versions this venv tests);
- all-MiniLM-L6-v2 with its weights stored as float16: the float32 file (87 MB) is over what one call may carry
  (64 MiB). The service computes in float16 on CUDA anyway; sentence-transformers, the reference, upcasts the same
  weights to float32;
- the Amazon-Scientific item texts, since `../shared` beside the checkout does not travel. `.gpu/` is git-ignored:
  the research-only texts are never committed.

    .venv/bin/python bench/gpu_kit.py                      # here, once: writes .gpu/ (~56 MiB)
    bash bench/gpu_run.sh                                  # there, from the repo root, carrying .gpu
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, SCIENTIFIC, item_texts

KIT = REPO / ".gpu"
CARRY_LIMIT_BYTES = 64 << 20
# What the embedding service and the benchmark import that the GPU image lacks; their dependencies follow.
ROOTS = (
    "grpcio",
    "grpcio-health-checking",
    "grpcio-reflection",
    "protobuf",
    "structlog",
    "pydantic-settings",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-grpc",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def pinned_closure(roots: tuple[str, ...], python_version: str) -> dict[str, str]:
    """Each root and its runtime dependencies (no extras), at the version installed in this venv."""
    environment = {"python_version": python_version, "extra": ""}
    pins: dict[str, str] = {}
    pending = list(roots)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in pins:
            continue
        pins[name] = importlib.metadata.version(name)
        for line in importlib.metadata.requires(name) or ():
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                pending.append(requirement.name)
    return pins


def download_wheels(pins: dict[str, str], python_version: str, target: Path) -> None:
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    pinned = [f"{name}=={version}" for name, version in sorted(pins.items())]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python_version, "--implementation", "cp", *platforms, "-d", str(target), *pinned]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"pip could not fetch the wheels (is the package index reachable?):\n{done.stderr}")


def float16_model(source: Path, target: Path) -> None:
    """The model folder with every floating weight stored as float16; tokenizer and configs as they are."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "onnx"))
    for weights in source.glob("*.safetensors"):
        tensors = load_file(weights)
        half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(half, target / weights.name, metadata={"format": "pt"})


def size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def tracked_bytes() -> int:
    """The checkout's tracked files, which travel with every device call."""
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    return sum((REPO / p).stat().st_size for p in listing.stdout.split("\0") if p and (REPO / p).is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12", help="the GPU image's Python (3.12 on the H200 image)")
    parser.add_argument("--data", type=Path, default=SCIENTIFIC)
    args = parser.parse_args()

    from services.embedding.encoder import default_model_path

    if KIT.exists():
        shutil.rmtree(KIT)
    KIT.mkdir()
    pins = pinned_closure(ROOTS, args.python_version)
    print(f"wheels for Python {args.python_version}: {', '.join(f'{n}=={v}' for n, v in sorted(pins.items()))}")
    download_wheels(pins, args.python_version, KIT / "wheels")
    float16_model(default_model_path(), KIT / "model")
    texts = item_texts(args.data)
    (KIT / "texts.json").write_text(json.dumps(texts))
    tracked = tracked_bytes()
    kit = size_of(KIT)
    print(f"{KIT}: {kit / 2**20:.1f} MiB ({len(texts)} texts); with the tracked tree {(kit + tracked) / 2**20:.1f} MiB")
    if kit + tracked > CARRY_LIMIT_BYTES:
        raise SystemExit("over the 64 MiB one device call carries: drop a wheel the GPU image already holds")
    print('then: device run, command "bash bench/gpu_run.sh", carry [".gpu"], timeout_s 540')


if __name__ == "__main__":
    main()
