"""Building the HNSW index of an edge shard without blocking requests.

`EdgeShard.optimize()` holds Python's GIL for its whole run (seconds to minutes), and a shard folder can be
opened by one process only. So the serving shard never optimizes itself (its indexing threshold is set out of
reach, and searches on it stay exact); instead `BackgroundIndexer`:

1. asks the store to flush and copy its items shard to a new folder (under the store's write lock, which
   also starts a log of the item ids written from then on), then releases the lock;
2. runs `python -m services.retriever.indexing <staging> --dimension N` in a child process, which loads the
   copy with a low indexing threshold and runs `optimize()` there;
3. asks the store to install the copy: the store opens it, replays the logged writes onto it, points the
   `items` link at it and swaps the shard object (searches wait only for that pointer swap).

Searches keep using the old shard throughout steps 1 and 2. Items written during a build land unindexed in
the installed shard; when they are at least ``rebuild_at``, the indexer builds again at once, so the tail of a
burst of writes does not stay on exact search until the next burst.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)

# Indexing thresholds in KB of vectors per segment. The serving shard uses NEVER so that nothing it does can
# plan an optimisation; the builder uses BUILD so that every segment with data gets an HNSW graph.
NEVER_INDEX_KB = 1_000_000_000
BUILD_INDEX_KB = 1

_REPO_ROOT = Path(__file__).resolve().parents[2]


class IndexBuildError(RuntimeError):
    """The index build failed; the store keeps serving from its old shard."""


@dataclass(frozen=True, slots=True)
class BuildResult:
    points: int
    indexed_vectors: int
    segments: int
    optimize_s: float


class IndexTarget(Protocol):
    """What the indexer needs from a store (EdgeVectorStore implements it)."""

    def snapshot_for_index(self) -> Path:
        """Flush and copy the items shard to a new folder (returned); start logging item writes."""

    def install_index(self, staging: Path) -> int:
        """Replay the logged writes onto `staging`, swap it in as the items shard; return how many were replayed
        (items written during the build, unindexed in the new shard)."""

    def discard_index(self, staging: Path) -> None:
        """Stop logging writes and remove `staging`."""

    @property
    def dimension(self) -> int: ...


class BackgroundIndexer:
    """Runs one index build at a time on a daemon thread; the optimisation itself runs in a child process."""

    def __init__(self, target: IndexTarget, timeout_s: float = 3600.0, rebuild_at: int | None = None) -> None:
        self._target = target
        self._timeout_s = timeout_s
        self._rebuild_at = rebuild_at
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False
        self.phase = "idle"  # idle | copying | optimizing | installing
        self.last_error: str | None = None
        self.last_result: BuildResult | None = None
        self.builds_completed = 0

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Starts a build and returns at once; False when one is running already or the indexer is closed."""
        with self._lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return False
            self._thread = threading.Thread(target=self._run, name="edge-index-build", daemon=True)
            self._thread.start()
            return True

    def wait(self, timeout_s: float | None = None) -> bool:
        """Waits for the running build, if any; True when none is running afterwards."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stops a running build (kills the child process) and waits for the thread to finish."""
        with self._lock:
            self._closed = True
            process = self._process
            thread = self._thread
        if process is not None and process.poll() is None:
            process.kill()
        if thread is not None:
            thread.join(timeout_s)

    def _run(self) -> None:
        while (replayed := self._build()) is not None and self._rebuild_at is not None and not self._closed:
            if replayed < self._rebuild_at:
                break
            logger.info("%d items were written during the build and are unindexed: building again", replayed)

    def _build(self) -> int | None:
        """One build; the writes replayed onto the installed shard, or None when the build failed."""
        started = time.monotonic()
        staging: Path | None = None
        try:
            self.phase = "copying"
            staging = self._target.snapshot_for_index()
            self.phase = "optimizing"
            result = self._optimize_in_child(staging)
            with self._lock:
                if self._closed:
                    raise IndexBuildError("store closed during the index build")
            self.phase = "installing"
            replayed = self._target.install_index(staging)
            staging = None
            self.last_result = result
            self.last_error = None
            self.builds_completed += 1
            logger.info(
                "index build done: %d points, %d indexed, optimize %.2fs, total %.2fs",
                result.points,
                result.indexed_vectors,
                result.optimize_s,
                time.monotonic() - started,
            )
            return replayed
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.warning("index build failed, serving from the old shard: %s", self.last_error)
            if staging is not None:
                try:
                    self._target.discard_index(staging)
                except Exception:
                    logger.exception("could not discard the staging shard")
            return None
        finally:
            self.phase = "idle"

    def _optimize_in_child(self, staging: Path) -> BuildResult:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        command = [
            sys.executable,
            "-m",
            "services.retriever.indexing",
            str(staging),
            "--dimension",
            str(self._target.dimension),
        ]
        with self._lock:
            if self._closed:
                raise IndexBuildError("indexer closed")
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            self._process = process
        try:
            stdout, stderr = process.communicate(timeout=self._timeout_s)
        except subprocess.TimeoutExpired as exc:
            process.kill()
            process.communicate()
            raise IndexBuildError(f"index build took longer than {self._timeout_s:.0f}s") from exc
        finally:
            with self._lock:
                self._process = None
        if process.returncode != 0:
            tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
            raise IndexBuildError(f"optimizer process exited with {process.returncode}: {' | '.join(tail)}")
        try:
            data = json.loads(stdout.decode().strip().splitlines()[-1])
            return BuildResult(
                points=int(data["points"]),
                indexed_vectors=int(data["indexed_vectors"]),
                segments=int(data["segments"]),
                optimize_s=float(data["optimize_s"]),
            )
        except (ValueError, KeyError, IndexError) as exc:
            raise IndexBuildError(f"optimizer process gave no result: {stdout[-200:]!r}") from exc


def optimize_shard(path: Path, dimension: int) -> BuildResult:
    """Loads the shard at `path` with a low indexing threshold, builds its indexes, closes it. Runs in the
    child process only: it holds the GIL for the whole build."""
    from qdrant_edge import Distance, EdgeConfig, EdgeOptimizersConfig, EdgeShard, EdgeVectorParams

    config = EdgeConfig(
        vectors=EdgeVectorParams(size=dimension, distance=Distance.Cosine),
        optimizers=EdgeOptimizersConfig(indexing_threshold=BUILD_INDEX_KB),
    )
    shard = EdgeShard.load(str(path), config)
    try:
        started = time.monotonic()
        shard.optimize()
        elapsed = time.monotonic() - started
        info = shard.info()
        shard.flush()
        return BuildResult(
            points=info.points_count,
            indexed_vectors=info.indexed_vectors_count,
            segments=info.segments_count,
            optimize_s=elapsed,
        )
    finally:
        shard.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the HNSW index of a copied edge shard.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--dimension", type=int, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(OSError):
        os.nice(10)  # leave the CPU to the serving process first
    result = optimize_shard(args.path, args.dimension)
    print(
        json.dumps(
            {
                "points": result.points,
                "indexed_vectors": result.indexed_vectors,
                "segments": result.segments,
                "optimize_s": result.optimize_s,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
