"""A micro-batcher: concurrent requests' items are gathered into batches that run on a dedicated
executor, so heavy work (a model forward pass) never runs on the event loop and shares one batch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.common.errors import OverloadedError

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]


class MicroBatcher(Generic[T, R]):
    """Runs `run_batch` over items gathered from concurrent `submit` calls.

    A batch closes when it holds `max_batch_size` items or `max_wait_s` has passed since its first item.
    A request is never split across batches unless it alone is larger than a batch. More than
    `max_queued_items` waiting items is overload: `submit` raises OverloadedError at once.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        executor: Executor,
        max_batch_size: int,
        max_wait_s: float,
        max_queued_items: int,
    ) -> None:
        self._run_batch = run_batch
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_queued_items = max_queued_items
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._queued_items = 0
        self._worker: asyncio.Task[None] | None = None
        # A request that did not fit the last batch; it opens the next one, keeping arrival order.
        self._carried: _Pending[T, R] | None = None

    @property
    def queued_items(self) -> int:
        return self._queued_items

    async def submit(self, items: Sequence[T]) -> list[R]:
        if self._queued_items + len(items) > self._max_queued_items:
            raise OverloadedError(
                f"{self._queued_items} items are already waiting (limit {self._max_queued_items}); "
                "retry with backoff or send smaller batches"
            )
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queued_items += len(items)
        await self._queue.put(_Pending(items, future))
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _gather(self) -> list[_Pending[T, R]]:
        first = self._carried or await self._queue.get()
        self._carried = None
        batch = [first]
        size = len(first.items)
        deadline = asyncio.get_running_loop().time() + self._max_wait_s
        while size < self._max_batch_size:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0 and self._queue.empty():
                break
            try:
                pending = await asyncio.wait_for(self._queue.get(), max(timeout, 0))
            except TimeoutError:
                break
            if size + len(pending.items) > self._max_batch_size:
                # Keep it whole for the next batch rather than split a request.
                self._carried = pending
                break
            batch.append(pending)
            size += len(pending.items)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            items = [item for pending in batch for item in pending.items]
            self._queued_items -= len(items)
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, items)
            except Exception as error:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            start = 0
            for pending in batch:
                end = start + len(pending.items)
                if not pending.future.done():
                    pending.future.set_result(results[start:end])
                start = end
