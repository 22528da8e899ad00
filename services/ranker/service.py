"""The ranker's domain entry: the loaded checkpoints of every catalog, hot reload of newer ones, validated scoring
off the event loop.

The default catalog's newest model is loaded at warm-up and always held. Other catalogs' newest models and pinned
versions are loaded on first use (once, however many calls ask at the same time) and held in a least-recently-used
set of at most ``max_loaded_models``. The watcher swaps in newer checkpoints of every catalog whose newest model is
held; calls in flight finish on the model they started with."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog

from services.common.catalogs import DEFAULT_CATALOG, check_catalog
from services.common.encoders import encoder_label
from services.common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, ServiceError
from services.ranker.checkpoints import (
    METADATA_FILE,
    CheckpointMetadata,
    catalog_root,
    list_checkpoints,
    load_scorer,
)
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


ModelKey = tuple[str, str]  # (catalog, version)


def _catalog_label(catalog: str) -> str:
    return "the default catalog" if catalog == DEFAULT_CATALOG else f"catalog {catalog}"


def _no_model(catalog: str) -> FailedPreconditionError:
    if catalog == DEFAULT_CATALOG:
        return FailedPreconditionError("no ranker model is loaded yet: run `recsys train` to publish a checkpoint")
    return FailedPreconditionError(f"no ranker model for catalog {catalog}: run `recsys train --catalog {catalog}`")


def _unknown_version(catalog: str, version: str, available: Sequence[str]) -> NotFoundError:
    shown = ", ".join(available[:20]) + (f" and {len(available) - 20} more" if len(available) > 20 else "")
    return NotFoundError(
        f"model version {version[:100]!r} does not exist in {_catalog_label(catalog)}; "
        f"available (newest first): {shown}"
    )


class RankingService:
    def __init__(
        self,
        checkpoint_dir: Path,
        device: str,
        reload_interval_s: float,
        limits: ScoringLimits,
        observer: ScoringObserver | None = None,
        max_loaded_models: int = 4,
    ) -> None:
        if max_loaded_models < 1:
            raise ValueError("max_loaded_models must be at least 1")
        self.checkpoint_dir = checkpoint_dir
        self.observer = observer
        self.device = device
        self.reload_interval_s = reload_interval_s
        self.limits = limits
        self.max_loaded_models = max_loaded_models
        # Held models, least recently used first. All reads and writes happen on the event loop.
        self._models: OrderedDict[ModelKey, LoadedModel] = OrderedDict()
        # catalog -> version of its newest model, for catalogs whose newest model is held (the watcher's list).
        self._newest: dict[str, str] = {}
        # Held versions some call pinned by name: a newer checkpoint does not drop them, only the LRU bound does.
        self._pinned: set[ModelKey] = set()
        # Loads in progress, so concurrent first calls for one model share one load.
        self._loading: dict[ModelKey, asyncio.Task[LoadedModel]] = {}
        # (catalog, encoder) -> the newest version trained on that encoder, for calls whose newest model is not;
        # forgotten when a newer checkpoint is loaded.
        self._by_encoder: dict[tuple[str, str], str] = {}
        # One thread scores; torch parallelises inside. Loading uses the same thread, so a load never competes
        # with a forward pass for the cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ranker")
        self._watcher: asyncio.Task[None] | None = None

    @property
    def current(self) -> LoadedModel | None:
        """The default catalog's newest held model (None before warm-up found one)."""
        return self.held(DEFAULT_CATALOG)

    def held(self, catalog: str, version: str = "") -> LoadedModel | None:
        """The held model of ``catalog`` at ``version`` (empty: its newest), without loading anything."""
        version = version or self._newest.get(catalog, "")
        return self._models.get((catalog, version)) if version else None

    def loaded_keys(self) -> list[ModelKey]:
        """(catalog, version) of every held model, least recently used first."""
        return list(self._models)

    def _load(self, path: Path) -> LoadedModel:
        scorer, metadata = load_scorer(path, device=self.device)
        return LoadedModel(scorer, metadata, path)

    async def _versions(self, catalog: str) -> list[Path]:
        # Reads a metadata file per version: off the event loop, but not on the scoring thread.
        return await asyncio.to_thread(list_checkpoints, catalog_root(self.checkpoint_dir, catalog))

    async def _load_once(self, key: ModelKey, path: Path) -> LoadedModel:
        """The held model for ``key``, else loads ``path`` on the executor; concurrent calls share one load."""
        held = self._models.get(key)
        if held is not None:
            return held
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load_and_log(key, path))
            self._loading[key] = task
            task.add_done_callback(lambda done: self._load_finished(key, done))
        # A caller that gives up (deadline) must not cancel the load the others wait for.
        return await asyncio.shield(task)

    def _load_finished(self, key: ModelKey, task: asyncio.Task[LoadedModel]) -> None:
        """A failed load is forgotten (the next call tries again). A finished one stays until a caller holds its
        model (`_settle`): callers that resume later must find it here, not start a second load."""
        failed = task.cancelled() or task.exception() is not None
        if failed and self._loading.get(key) is task:
            del self._loading[key]

    def _settle(self, key: ModelKey) -> None:
        """The model of ``key`` is held (or deliberately not): its finished load is no longer needed."""
        task = self._loading.get(key)
        if task is not None and task.done():
            del self._loading[key]

    async def _load_and_log(self, key: ModelKey, path: Path) -> LoadedModel:
        loaded = await asyncio.get_running_loop().run_in_executor(self._executor, self._load, path)
        catalog, version = key
        log.info("model loaded", catalog=catalog or "(default)", version=version, path=str(path))
        return loaded

    def _hold(self, key: ModelKey, model: LoadedModel) -> None:
        """Marks ``key`` most recently used (adding it), then drops the least recently used models over the bound.
        The default catalog's newest model is never dropped."""
        self._models[key] = model
        self._models.move_to_end(key)
        protected = (DEFAULT_CATALOG, self._newest.get(DEFAULT_CATALOG, ""))
        while len(self._models) > self.max_loaded_models:
            victim = next((k for k in self._models if k != protected), None)
            if victim is None:
                break
            del self._models[victim]
            self._pinned.discard(victim)
            catalog, version = victim
            if self._newest.get(catalog) == version:
                del self._newest[catalog]  # no longer held, so no longer watched
            log.info("model unloaded (least recently used)", catalog=catalog or "(default)", version=version)

    def _set_newest(self, catalog: str, model: LoadedModel) -> None:
        version = model.path.name
        self._by_encoder = {key: v for key, v in self._by_encoder.items() if key[0] != catalog}
        old = self._newest.get(catalog)
        self._newest[catalog] = version
        if old is not None and old != version and (catalog, old) not in self._pinned:
            self._models.pop((catalog, old), None)
        self._hold((catalog, version), model)

    async def model(self, catalog: str = DEFAULT_CATALOG, version: str = "", encoder: str | None = None) -> LoadedModel:
        """The model that serves ``catalog`` at ``version`` (empty: the catalog's newest; with ``encoder``, the
        newest trained on that encoder's vectors), loading it if needed. InvalidArgumentError for a malformed
        catalog name, FailedPreconditionError when the catalog has no checkpoint (of that encoder), or the
        pinned one was trained on another, NotFoundError for a version not on disk."""
        loaded = await self._model(catalog, version)
        if encoder is None or loaded.metadata.encoder_version == encoder:
            return loaded
        if version:
            raise FailedPreconditionError(
                f"ranker model {version} of {_catalog_label(catalog)} was trained on "
                f"{encoder_label(loaded.metadata.encoder_version)}'s vectors, not {encoder_label(encoder)}'s: "
                "pin a model trained on the encoder the catalog serves"
            )
        chosen = self._by_encoder.get((catalog, encoder))
        if chosen is None:
            chosen = (await self._newest_trained_on(catalog, encoder, await self._versions(catalog))).version
            self._by_encoder[(catalog, encoder)] = chosen
        return await self._model(catalog, chosen)

    async def _newest_trained_on(self, catalog: str, encoder: str, paths: Sequence[Path]) -> CheckpointMetadata:
        """The metadata of the newest of ``paths`` trained on ``encoder``'s vectors; FailedPreconditionError
        when none was."""
        described = await asyncio.to_thread(lambda: [CheckpointMetadata.from_file(p / METADATA_FILE) for p in paths])
        found = next((m for m in described if m.encoder_version == encoder), None)
        if found is None:
            raise FailedPreconditionError(
                f"no ranker model of {_catalog_label(catalog)} was trained on {encoder_label(encoder)}'s vectors: "
                "train one (`recsys train`) before switching the catalog to that encoder"
            )
        return found

    async def _model(self, catalog: str, version: str) -> LoadedModel:
        check_catalog(catalog)
        held = self.held(catalog, version)
        if held is not None:
            self._models.move_to_end((catalog, held.path.name))
            if version:
                self._pinned.add((catalog, version))
            return held
        paths = await self._versions(catalog)
        if not paths:
            raise _no_model(catalog)
        if version:
            path = next((p for p in paths if p.name == version), None)
            if path is None:
                raise _unknown_version(catalog, version, [p.name for p in paths])
        else:
            path = paths[0]
        key = (catalog, path.name)
        try:
            loaded = await self._load_once(key, path)
        except ServiceError:
            raise
        except Exception as error:  # a broken or vanished checkpoint: say which, not a bare INTERNAL
            raise FailedPreconditionError(
                f"ranker model {path.name} of {_catalog_label(catalog)} could not be loaded ({error}): publish it again"
            ) from error
        if version:
            self._pinned.add(key)
            self._hold(key, loaded)
        elif self._newest.get(catalog) is None or self._newest[catalog] == path.name:
            self._set_newest(catalog, loaded)
        else:
            # The watcher swapped in a different newest while this call listed or loaded: serve what was asked
            # for, without moving the catalog's newest back.
            self._hold(key, loaded)
        self._settle(key)
        return loaded

    async def describe(
        self, catalog: str = DEFAULT_CATALOG, version: str = "", encoder: str | None = None
    ) -> tuple[CheckpointMetadata, list[str]]:
        """The metadata of the model that would serve ``catalog`` at ``version`` (the held newest one when
        ``version`` is empty, so it matches what scores now; with ``encoder``, the newest trained on it) and the
        versions on disk, newest first. Reads metadata only: describing a model does not load it. Same errors
        as ``model``."""
        check_catalog(catalog)
        paths = await self._versions(catalog)
        available = [p.name for p in paths]
        if encoder is not None and not version:
            return await self._newest_trained_on(catalog, encoder, paths), available
        held = self.held(catalog, version)
        if held is not None:
            return held.metadata, available
        if not paths:
            raise _no_model(catalog)
        path = paths[0]
        if version:
            found = next((p for p in paths if p.name == version), None)
            if found is None:
                raise _unknown_version(catalog, version, available)
            path = found
        metadata = await asyncio.to_thread(CheckpointMetadata.from_file, path / METADATA_FILE)
        return metadata, available

    async def reload_if_newer(self, catalog: str = DEFAULT_CATALOG) -> bool:
        """Loads ``catalog``'s newest checkpoint when it differs from the held newest one. In-flight calls finish
        on the model they started with; the next call gets the new one. A catalog other than the default one is
        watched only while its newest model is held."""
        if catalog != DEFAULT_CATALOG and catalog not in self._newest:
            return False
        paths = await self._versions(catalog)
        if not paths:
            return False
        path = paths[0]
        if self._newest.get(catalog) == path.name and (catalog, path.name) in self._models:
            return False
        loaded = await self._load_once((catalog, path.name), path)
        self._settle((catalog, path.name))
        if catalog != DEFAULT_CATALOG and catalog not in self._newest:
            return False  # dropped (least recently used) while this loaded: do not bring it back
        self._set_newest(catalog, loaded)
        if self.observer is not None and catalog == DEFAULT_CATALOG:
            self.observer.model_loaded(loaded.metadata.version, str(path))
        return True

    async def warm_up(self) -> None:
        """Waits for a checkpoint of the default catalog (NOT_SERVING until then), then keeps watching every held
        catalog for newer ones."""
        while not await self.reload_if_newer(DEFAULT_CATALOG):
            log.warning("no checkpoint yet; run `recsys train`", checkpoint_dir=str(self.checkpoint_dir))
            await asyncio.sleep(self.reload_interval_s)
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval_s)
            for catalog in [DEFAULT_CATALOG, *(c for c in self._newest if c != DEFAULT_CATALOG)]:
                try:
                    await self.reload_if_newer(catalog)
                except Exception:
                    # A broken checkpoint must not take down the model that serves now.
                    log.exception(
                        "loading a newer checkpoint failed; keeping the current model", catalog=catalog or "(default)"
                    )

    def _validate(self, requests: Sequence[ScoreRequest], model: LoadedModel) -> None:
        dimension = model.scorer.model.config.text_dim
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
                        f"{dimension} (vectors of {model.metadata.embedding_model_id})"
                    )
                if not np.isfinite(vectors).all():
                    raise InvalidArgumentError(f"tasks[{index}].{what} vectors hold NaN or infinite values")

    async def score(
        self,
        requests: Sequence[ScoreRequest],
        catalog: str = DEFAULT_CATALOG,
        version: str = "",
        encoder: str | None = None,
    ) -> tuple[list[np.ndarray], str]:
        """Scores with ``catalog``'s model at ``version`` (empty: its newest); returns the scores and the version
        that scored them."""
        if not requests:
            raise InvalidArgumentError("tasks is empty: send at least one scoring task")
        model = await self.model(catalog, version, encoder)
        self._validate(requests, model)
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

    async def suggest(
        self,
        history_item_ids: Sequence[str],
        limit: int,
        catalog: str = DEFAULT_CATALOG,
        version: str = "",
        encoder: str | None = None,
    ) -> tuple[list[tuple[str, float]], str]:
        """Candidates from ``catalog``'s item graph for a history (see :meth:`RankerScorer.suggest`) and the
        version that proposed them."""
        if not history_item_ids:
            raise InvalidArgumentError("history_item_ids is empty: send the user's history, oldest first")
        if len(history_item_ids) > self.limits.max_history:
            raise InvalidArgumentError(
                f"{len(history_item_ids)} history items; the limit is {self.limits.max_history}: send the newest"
            )
        if not 1 <= limit <= self.limits.max_candidates:
            raise InvalidArgumentError(f"limit is {limit}; ask for 1 to {self.limits.max_candidates} candidates")
        model = await self.model(catalog, version, encoder)
        suggested = await asyncio.get_running_loop().run_in_executor(
            self._executor, model.scorer.suggest, list(history_item_ids), limit
        )
        return suggested, model.metadata.version

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self._executor.shutdown(wait=True)
