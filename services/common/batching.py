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
from services.common.logging import deadline_var

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]
    enqueued: float  # loop time of submit
    deadline: float | None  # loop time by which the caller needs the answer
    cost: int = 0  # the items' total cost (tokens), when the batcher has a cost function


@dataclass(frozen=True)
class BatchStats:
    """What one batch looked like, for metrics: its size, how long its oldest request waited, how long it ran."""

    size: int
    queue_wait_s: float
    run_s: float


class MicroBatcher(Generic[T, R]):
    """Runs `run_batch` over items gathered from concurrent `submit` calls.

    A batch closes when it holds `max_batch_size` items, when its items' total `cost` (for texts: their tokens)
    reaches `max_batch_cost`, or when `max_wait_s` has passed since its first item; it waits only when the
    last batch served more than one request, and takes the requests queued meanwhile at once. A request is
    never split across batches unless it alone is larger than a batch. More than
    `max_queued_items` waiting items is overload: `submit` raises OverloadedError at once. So is a request
    whose caller's deadline (the current call's, from the request context) ends before the work ahead of it
    can be done at the measured rate; and requests whose caller gave up or whose deadline passed while
    they waited are dropped before they reach the model, so a saturated service spends no time on them.

    With `chunk_items`, a batch runs as executor tasks of at most that many items, one after the other: work
    that another batcher hands the same one-thread executor meanwhile runs between two chunks instead of after
    the whole batch.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        executor: Executor,
        max_batch_size: int,
        max_wait_s: float,
        max_queued_items: int,
        on_batch: Callable[[BatchStats], None] | None = None,
        cost: Callable[[T], int] | None = None,
        max_batch_cost: int | None = None,
        chunk_items: int | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._chunk_items = chunk_items
        self._cost = cost
        self._max_batch_cost = max_batch_cost if cost is not None else None
        self._on_batch = on_batch
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_queued_items = max_queued_items
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._queued_items = 0
        self._worker: asyncio.Task[None] | None = None
        # A request that did not fit the last batch; it opens the next one, keeping arrival order.
        self._carried: _Pending[T, R] | None = None
        # Items per second the batches ran at recently (None until the first batch), and the size of the batch
        # running now: with the queue, the work ahead of a new request.
        self._rate: float | None = None
        self._running_items = 0
        self._last_batch_requests = 0

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def admit(self, count: int) -> None:
        """Raises OverloadedError when `count` more items would pass the queue limit: callers that prepare
        their items first (tokenisation) check before spending the work."""
        if self._queued_items + count > self._max_queued_items:
            raise OverloadedError(
                f"{self._queued_items} items are already waiting (limit {self._max_queued_items}); "
                "retry with backoff or send smaller batches"
            )

    async def submit(self, items: Sequence[T]) -> list[R]:
        self.admit(len(items))
        loop = asyncio.get_running_loop()
        # deadline_var holds time.monotonic() values, the clock asyncio's loop.time() reads too.
        deadline = deadline_var.get()
        if deadline is not None and self._rate:
            # Only the work ahead counts: a request alone is always tried, whatever its size.
            expected_s = (self._running_items + self._queued_items) / self._rate
            if loop.time() + expected_s > deadline:
                raise OverloadedError(
                    f"{self._queued_items} items are waiting, about {expected_s:.2f} s of work, more than the "
                    f"{max(deadline - loop.time(), 0):.2f} s the call has left; retry later or elsewhere"
                )
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        future: asyncio.Future[list[R]] = loop.create_future()
        self._queued_items += len(items)
        cost = sum(self._cost(item) for item in items) if self._cost is not None else 0
        await self._queue.put(_Pending(items, future, loop.time(), deadline, cost))
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _run(self, items: list[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        chunk = self._chunk_items
        if chunk is None or len(items) <= chunk:
            return await loop.run_in_executor(self._executor, self._run_batch, items)
        results: list[R] = []
        for start in range(0, len(items), chunk):
            results.extend(await loop.run_in_executor(self._executor, self._run_batch, items[start : start + chunk]))
        return results

    async def _gather(self) -> list[_Pending[T, R]]:
        first = self._carried or await self._queue.get()
        self._carried = None
        batch = [first]
        size = len(first.items)
        cost = first.cost
        budget = self._max_batch_cost
        loop = asyncio.get_running_loop()
        # Waiting for company pays only when requests come together: a lone caller (the last batch served one
        # request) would wait max_wait_s for nobody. Requests already queued join at once either way.
        wait_s = self._max_wait_s if self._last_batch_requests > 1 else 0.0
        deadline = loop.time() + wait_s
        while size < self._max_batch_size and (budget is None or cost < budget):
            if self._queue.empty():
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
            else:
                pending = self._queue.get_nowait()
            if size + len(pending.items) > self._max_batch_size or (
                budget is not None and cost + pending.cost > budget
            ):
                # Keep it whole for the next batch rather than split a request.
                self._carried = pending
                break
            batch.append(pending)
            size += len(pending.items)
            cost += pending.cost
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            gathered = await self._gather()
            self._queued_items -= sum(len(pending.items) for pending in gathered)
            now = loop.time()
            batch = []
            for pending in gathered:
                if pending.future.done():  # the caller gave up (cancelled)
                    continue
                if pending.deadline is not None and pending.deadline <= now:
                    pending.future.set_exception(
                        OverloadedError("the request waited past its deadline in the queue; retry later or elsewhere")
                    )
                    continue
                batch.append(pending)
            if not batch:
                continue
            items = [item for pending in batch for item in pending.items]
            self._last_batch_requests = len(batch)
            started = loop.time()
            self._running_items = len(items)
            try:
                results = await self._run(items)
            except Exception as error:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            finally:
                self._running_items = 0
            run_s = loop.time() - started
            if run_s > 0:
                rate = len(items) / run_s
                self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate
            if self._on_batch is not None:
                self._on_batch(BatchStats(len(items), started - batch[0].enqueued, run_s))
            start = 0
            for pending in batch:
                end = start + len(pending.items)
                if not pending.future.done():
                    pending.future.set_result(results[start:end])
                start = end
