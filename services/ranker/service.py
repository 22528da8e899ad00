"""The ranker's domain entry: the loaded checkpoint, hot reload of newer ones, validated scoring off the
event loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog

from services.common.errors import FailedPreconditionError, InvalidArgumentError
from services.ranker.checkpoints import CheckpointMetadata, latest_checkpoint, load_scorer
from services.ranker.model import RankerScorer, ScoreRequest

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    scorer: RankerScorer
    metadata: CheckpointMetadata
    path: Path


class ScoringObserver(Protocol):
    """Told about every scoring call and every model load (metrics implement it)."""

    def scored(self, tasks: int, candidates: int, queue_wait_s: float, run_s: float) -> None: ...

    def model_loaded(self, version: str, path: str) -> None: ...


@dataclass(frozen=True)
class ScoringLimits:
    max_tasks: int
    max_candidates: int
    max_history: int


class RankingService:
    def __init__(
        self,
        checkpoint_dir: Path,
        device: str,
        reload_interval_s: float,
        limits: ScoringLimits,
        observer: ScoringObserver | None = None,
    ) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.observer = observer
        self.device = device
        self.reload_interval_s = reload_interval_s
        self.limits = limits
        self.current: LoadedModel | None = None
        # One thread scores; torch parallelises inside. Loading uses the same thread, so a swap never
        # races a forward pass on a half-built model.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ranker")
        self._watcher: asyncio.Task[None] | None = None

    def _load(self, path: Path) -> LoadedModel:
        scorer, metadata = load_scorer(path, device=self.device)
        return LoadedModel(scorer, metadata, path)

    async def reload_if_newer(self) -> bool:
        """Loads the newest checkpoint when it differs from the current one. In-flight calls finish on the
        model they started with; the next call gets the new one."""
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None or (self.current is not None and self.current.path == path):
            return False
        loaded = await asyncio.get_running_loop().run_in_executor(self._executor, self._load, path)
        self.current = loaded
        log.info("model loaded", version=loaded.metadata.version, path=str(path))
        if self.observer is not None:
            self.observer.model_loaded(loaded.metadata.version, str(path))
        return True

    async def warm_up(self) -> None:
        """Waits for a checkpoint (NOT_SERVING until then), then keeps watching for newer ones."""
        while not await self.reload_if_newer():
            log.warning("no checkpoint yet; run `recsys train`", checkpoint_dir=str(self.checkpoint_dir))
            await asyncio.sleep(self.reload_interval_s)
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval_s)
            try:
                await self.reload_if_newer()
            except Exception:
                # A broken checkpoint must not take down the model that serves now.
                log.exception("loading a newer checkpoint failed; keeping the current model")

    def _validate(self, requests: Sequence[ScoreRequest], dimension: int) -> None:
        if not requests:
            raise InvalidArgumentError("tasks is empty: send at least one scoring task")
        if len(requests) > self.limits.max_tasks:
            raise InvalidArgumentError(f"{len(requests)} tasks; the limit is {self.limits.max_tasks}: split them")
        for index, request in enumerate(requests):
            if not len(request.candidate_item_ids):
                raise InvalidArgumentError(f"tasks[{index}] has no candidates")
            if len(request.candidate_item_ids) > self.limits.max_candidates:
                raise InvalidArgumentError(
                    f"tasks[{index}] has {len(request.candidate_item_ids)} candidates; the limit is "
                    f"{self.limits.max_candidates}"
                )
            if len(request.history_item_ids) > self.limits.max_history:
                raise InvalidArgumentError(
                    f"tasks[{index}] has {len(request.history_item_ids)} history items; the limit is "
                    f"{self.limits.max_history}: send the newest"
                )
            for what, vectors in (("history", request.history_vectors), ("candidates", request.candidate_vectors)):
                # Rows of zero width (items sent without vectors) must fail here, not in the model.
                if vectors.shape[0] and vectors.shape[1] != dimension:
                    raise InvalidArgumentError(
                        f"tasks[{index}].{what} vectors have {vectors.shape[1]} values; the model expects "
                        f"{dimension} (vectors of {self.current.metadata.embedding_model_id if self.current else '?'})"
                    )
                if not np.isfinite(vectors).all():
                    raise InvalidArgumentError(f"tasks[{index}].{what} vectors hold NaN or infinite values")

    async def score(self, requests: Sequence[ScoreRequest]) -> tuple[list[np.ndarray], str]:
        model = self.current
        if model is None:
            raise FailedPreconditionError("no ranker model is loaded yet: run `recsys train` to publish a checkpoint")
        self._validate(requests, model.scorer.model.config.text_dim)
        submitted = time.perf_counter()

        def run() -> list[np.ndarray]:
            started = time.perf_counter()
            scores = model.scorer.score_many(requests)
            if self.observer is not None:
                candidates = sum(len(request.candidate_item_ids) for request in requests)
                self.observer.scored(len(requests), candidates, started - submitted, time.perf_counter() - started)
            return scores

        scores = await asyncio.get_running_loop().run_in_executor(self._executor, run)
        return scores, model.metadata.version

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self._executor.shutdown(wait=True)
