"""Generates the Python code for every proto under protos/ (run after editing a .proto).

The generated files are committed beside their .proto files; tests/contract checks they are fresh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"


def proto_files(root: Path) -> list[Path]:
    return sorted(root.glob("recsys/**/*.proto"))


def generate(source_root: Path, out_dir: Path) -> None:
    """Runs protoc for every proto under source_root, writing *_pb2.py, *_pb2.pyi and *_pb2_grpc.py."""
    include = Path(protoc.__file__).parent / "_proto"
    for proto in proto_files(source_root):
        args = [
            "protoc",
            f"-I{source_root}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(proto.relative_to(source_root)),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output folder (default: beside the protos)")
    args = parser.parse_args()
    generate(PROTO_ROOT, args.out)
    # Every folder from recsys/ down is a regular package, so setuptools finds the generated modules.
    for proto in proto_files(PROTO_ROOT):
        folder = proto.parent
        while folder != PROTO_ROOT:
            (folder / "__init__.py").touch()
            folder = folder.parent
    print(f"generated code for {len(proto_files(PROTO_ROOT))} protos", file=sys.stderr)


if __name__ == "__main__":
    main()
