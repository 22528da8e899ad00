"""Checks the protos like a public API: `buf lint` (STANDARD rules, protos/buf.yaml) and `buf breaking` against
the last release tag, or else the previous commit. Run by `make lint` and the contract tests.

    python scripts/check_protos.py [--against GIT_REF]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO_ROOT / "protos"
# Where `make lint` installs buf from the npm registry (@bufbuild/buf).
LOCAL_BUF = REPO_ROOT / ".venv" / "buf" / "node_modules" / ".bin" / "buf"
INSTALL_HINT = "install it with `make .venv/buf/node_modules/.bin/buf` (npm install @bufbuild/buf; needs node and npm)"


def find_buf() -> str | None:
    """The buf binary: the one `make` installed, else one on PATH. The npm package's launcher needs node."""
    if LOCAL_BUF.exists() and shutil.which("node"):
        return str(LOCAL_BUF)
    return shutil.which("buf")


def _git(*args: str) -> str | None:
    result = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def baseline_ref() -> str | None:
    """The protos' last published state: the newest tag reachable from HEAD, else the previous commit (the
    working tree is checked against it, so the last commit and uncommitted edits are both covered). None in a
    clone without history."""
    tag = _git("describe", "--tags", "--abbrev=0")
    if tag is not None:
        return tag
    return _git("rev-parse", "--verify", "--quiet", "HEAD~1^{commit}")


def git_input(ref: str) -> str:
    """buf's input for the protos folder as of a commit of this repository."""
    return f"{REPO_ROOT / '.git'}#ref={ref},subdir=protos"


def run_buf(buf: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([buf, *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=300)


def lint(buf: str, protos: Path = PROTO_ROOT) -> subprocess.CompletedProcess[str]:
    return run_buf(buf, "lint", str(protos))


def breaking(buf: str, against: str, protos: Path = PROTO_ROOT) -> subprocess.CompletedProcess[str]:
    return run_buf(buf, "breaking", str(protos), "--against", against)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default=None, help="git ref to compare with (default: last tag, else HEAD~1)")
    args = parser.parse_args()
    buf = find_buf()
    if buf is None:
        print(f"buf not found: {INSTALL_HINT}", file=sys.stderr)
        return 2
    failed = False
    result = lint(buf)
    print(result.stdout + result.stderr, end="")
    print(f"buf lint: {'ok' if result.returncode == 0 else 'FAILED'}")
    failed |= result.returncode != 0
    ref = args.against or baseline_ref()
    if ref is None:
        print("buf breaking: skipped, no previous commit or tag to compare with (a clone without history)")
    else:
        result = breaking(buf, git_input(ref))
        print(result.stdout + result.stderr, end="")
        print(f"buf breaking against {ref}: {'ok' if result.returncode == 0 else 'FAILED'}")
        if result.returncode != 0:
            print(
                "To change a message without breaking callers, add a field with a new number and mark removed "
                "ones `reserved` (README, 'Evolving the protos').",
                file=sys.stderr,
            )
        failed |= result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
