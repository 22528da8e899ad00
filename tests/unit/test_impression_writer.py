"""The gateway's impression writer: pages are recorded off the answer's path, in batches, retried until the
retriever takes them, visible to next-page requests meanwhile, and written before the gateway stops."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from services.common.errors import InvalidArgumentError
from services.gateway.impressions import ImpressionWriter
from services.gateway.model import BackendUnavailableError, Impression


class Retriever:
    """Records each call's pages; `down` refuses calls as an unreachable retriever does; `gate` holds calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Impression]]] = []
        self.down = False
        self.refuse = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def record_impressions(self, catalog: str, impressions: Sequence[Impression]) -> None:
        await self.gate.wait()
        if self.down:
            raise BackendUnavailableError("retriever", "the retriever service did not answer (UNAVAILABLE); retry")
        if self.refuse:
            raise InvalidArgumentError("impression is malformed")
        self.calls.append((catalog, list(impressions)))


def page(recommendation_id: str, number: int = 1, items: tuple[str, ...] = ("a",)) -> Impression:
    return Impression(recommendation_id, number, "u", items, timestamp=1.0)


async def test_pages_queued_while_a_write_runs_go_together_in_the_next_call() -> None:
    retriever = Retriever()
    writer = ImpressionWriter(retriever)  # type: ignore[arg-type]
    retriever.gate.clear()
    assert writer.submit("", page("r0"))
    await asyncio.sleep(0.01)  # the first call is under way, held at the gate
    for n in range(1, 6):
        assert writer.submit("shop" if n % 2 else "", page(f"r{n}"))
    retriever.gate.set()
    assert await writer.flush(5)
    assert [(c, [i.recommendation_id for i in pages]) for c, pages in retriever.calls] == [
        ("", ["r0"]),
        ("shop", ["r1", "r3", "r5"]),
        ("", ["r2", "r4"]),
    ]
    assert writer.written == 6


async def test_a_write_the_retriever_cannot_take_is_tried_again_until_it_can() -> None:
    retriever = Retriever()
    writer = ImpressionWriter(retriever)  # type: ignore[arg-type]
    retriever.down = True
    writer.submit("", page("r1"))
    assert not await writer.flush(0.3)
    assert [i.page for i in writer.pending("", "r1")] == [1]
    writer.submit("", page("r1", 2))  # goes with the retry
    retriever.down = False
    assert await writer.flush(5)
    assert [[(i.recommendation_id, i.page) for i in pages] for _, pages in retriever.calls] == [[("r1", 1), ("r1", 2)]]
    assert writer.pending("", "r1") == []


async def test_a_page_recorded_again_before_it_was_written_is_written_once_as_last_sent() -> None:
    retriever = Retriever()
    writer = ImpressionWriter(retriever)  # type: ignore[arg-type]
    retriever.gate.clear()
    writer.submit("", page("r1", items=("a",)))
    writer.submit("", page("r1", items=("b",)))
    retriever.gate.set()
    assert await writer.flush(5)
    assert [[i.item_ids for i in pages] for _, pages in retriever.calls] == [[("b",)]]


async def test_pages_the_retriever_refuses_are_dropped_and_do_not_hold_up_others() -> None:
    retriever = Retriever()
    writer = ImpressionWriter(retriever)  # type: ignore[arg-type]
    retriever.refuse = True
    writer.submit("", page("bad"))
    assert await writer.flush(5)
    retriever.refuse = False
    writer.submit("", page("good"))
    assert await writer.flush(5)
    assert [[i.recommendation_id for i in pages] for _, pages in retriever.calls] == [["good"]]


async def test_a_full_queue_refuses_and_close_writes_what_is_left() -> None:
    retriever = Retriever()
    writer = ImpressionWriter(retriever, capacity=2)  # type: ignore[arg-type]
    retriever.gate.clear()
    assert writer.submit("", page("r1")) and writer.submit("", page("r2"))
    assert not writer.submit("", page("r3"))
    assert writer.submit("", page("r2"))  # a page already queued replaces its copy, whatever the bound
    retriever.gate.set()
    await writer.close(5)
    assert sorted(i.recommendation_id for _, pages in retriever.calls for i in pages) == ["r1", "r2"]


async def test_forget_user_drops_their_queued_pages_and_waits_for_one_being_written() -> None:
    retriever = Retriever()
    writer = ImpressionWriter(retriever)  # type: ignore[arg-type]
    retriever.gate.clear()
    writer.submit("", page("r0"))  # user "u", held at the gate
    await asyncio.sleep(0.01)
    writer.submit("", page("r1"))  # queued behind it
    other = Impression("r2", 1, "someone-else", ("a",), timestamp=1.0)
    writer.submit("", other)
    forgetting = asyncio.create_task(writer.forget_user("", "u"))
    await asyncio.sleep(0.01)
    assert not forgetting.done()  # r0 is being written: the delete must come after it lands
    assert writer.pending("", "r1") == []
    retriever.gate.set()
    await asyncio.wait_for(forgetting, 5)
    assert await writer.flush(5)
    written = [i.recommendation_id for _, pages in retriever.calls for i in pages]
    assert written == ["r0", "r2"]
