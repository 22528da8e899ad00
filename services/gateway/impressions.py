"""Recording the pages Recommend answered, without the caller waiting for it.

A bounded queue drained by one task: each pass takes everything queued meanwhile and writes it with one
RecordImpressions call per catalog (group commit: under load, one call carries many pages; alone, a page is
written as soon as its answer is sent). A write the retriever could not take (down, restarting, late) is tried
again with a backoff until it can, so a page once answered is recorded even when the retriever dies a moment
later; impressions are keyed by (recommendation id, page), so a repeat stores nothing twice. Pages not written yet
are visible to this gateway's next-page requests (`pending`), `forget_user` drops a user's before DeleteUser,
and `close` writes what is left before the process exits. A full queue (the retriever away for long) makes
`submit` refuse, and the caller writes the page itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Sequence

import structlog

from services.common.errors import UnavailableError
from services.gateway.model import Impression, RetrievalPort

log = structlog.get_logger(__name__)

Key = tuple[str, str, int]  # catalog, recommendation id, page

FIRST_RETRY_S = 0.05
MAX_RETRY_S = 2.0
FORGET_WAIT_S = 10.0  # a write under way is a retriever call: its deadline


class ImpressionWriter:
    def __init__(self, retrieval: RetrievalPort, capacity: int = 10_000, batch: int = 256) -> None:
        self._retrieval = retrieval
        self._capacity = capacity
        self._batch = batch
        # Queued or being written, oldest first; a page recorded again replaces its older copy.
        self._pending: OrderedDict[Key, Impression] = OrderedDict()
        self._queued = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        # The pages of the write under way, and a future done when it ends (written or not).
        self._in_flight: set[Key] = set()
        self._write_done: asyncio.Future[None] | None = None
        self.written = 0  # pages the retriever took, for tests and logs

    def submit(self, catalog: str, impression: Impression) -> bool:
        """Queues the page for writing; False when the queue is full (the caller writes it then)."""
        key = (catalog, impression.recommendation_id, impression.page)
        if key not in self._pending and len(self._pending) >= self._capacity:
            return False
        self._pending.pop(key, None)
        self._pending[key] = impression
        self._idle.clear()
        self._queued.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return True

    def pending(self, catalog: str, recommendation_id: str) -> list[Impression]:
        """The pages of this recommendation queued here and not yet written."""
        return [i for (c, rid, _), i in self._pending.items() if c == catalog and rid == recommendation_id]

    async def forget_user(self, catalog: str, user_id: str, timeout_s: float = FORGET_WAIT_S) -> None:
        """Drops the user's pages not written yet and waits (at most `timeout_s`) for a write under way that holds
        one, so that a DeleteUser sent after this leaves none of them behind."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            theirs = [k for k, i in self._pending.items() if k[0] == catalog and i.user_id == user_id]
            for key in theirs:
                if key not in self._in_flight:
                    del self._pending[key]
            writing = self._write_done
            if writing is None or not self._in_flight.intersection(theirs):
                return
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writing), left)

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Waits until everything queued so far is written; False when `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout_s: float) -> None:
        """Writes what is queued (for at most `timeout_s`), then stops; what is left is logged as lost."""
        if not await self.flush(timeout_s):
            log.error("impressions not written before shutdown", pages=len(self._pending))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _drain(self) -> None:
        delay = FIRST_RETRY_S
        while self._pending:
            self._queued.clear()
            by_catalog: dict[str, list[tuple[Key, Impression]]] = {}
            for key, impression in list(self._pending.items())[: self._batch]:
                by_catalog.setdefault(key[0], []).append((key, impression))
            failed = False
            for catalog, entries in by_catalog.items():
                self._in_flight = {key for key, _ in entries}
                self._write_done = asyncio.get_running_loop().create_future()
                try:
                    written = await self._write(catalog, [impression for _, impression in entries])
                finally:
                    self._in_flight = set()
                    self._write_done.set_result(None)
                if not written:
                    failed = True
                    continue
                for key, impression in entries:
                    if self._pending.get(key) is impression:  # not replaced (or forgotten) meanwhile
                        del self._pending[key]
            if failed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queued.wait(), delay)  # new pages go with the retry
                delay = min(delay * 2, MAX_RETRY_S)
            else:
                delay = FIRST_RETRY_S
        self._idle.set()

    async def _write(self, catalog: str, impressions: Sequence[Impression]) -> bool:
        """One call; False when it should be tried again."""
        try:
            await self._retrieval.record_impressions(catalog, impressions)
        except UnavailableError as error:
            log.warning("impressions not written yet; trying again", pages=len(impressions), error=str(error))
            return False
        except Exception:
            # Refused (malformed, or a catalog that cannot be written): trying again cannot help, and the pages
            # behind these must not wait for them.
            log.exception("impressions refused by the retriever; dropped", pages=len(impressions))
            return True
        self.written += len(impressions)
        return True
