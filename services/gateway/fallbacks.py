"""What the gateway serves when a backend is down: a cache of popular items for a retriever outage, and the
query without markup and control characters for a preprocessor outage."""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Sequence
from typing import Any

from services.gateway.model import ItemFilter, RetrievalPort, StoredItem
from services.preprocessor.markup import remove_markup


def raw_query(text: str) -> str:
    """The query as typed, without markup (the preprocessor's own parser), control characters and repeated
    spaces: what the embedding model can read, and reasons may quote, when the preprocessor cannot clean it.
    The length was checked against the query limit before."""
    printable = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in remove_markup(text, complete=True))
    return " ".join(printable.split())


def matches(item: StoredItem, item_filter: ItemFilter) -> bool:
    """The retriever's filter semantics on a cached payload (all conditions hold)."""
    payload = item.payload
    if item_filter.categories_any and not set(item.categories) & set(item_filter.categories_any):
        return False
    for name, values in item_filter.keywords.items():
        if not set(_strings(payload.get(name))) & set(values):
            return False
    for name, (low, high) in item_filter.ranges.items():
        value = payload.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if (low is not None and value < low) or (high is not None and value > high):
            return False
    return all(payload.get(name) is flag for name, flag in item_filter.flags.items())


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


class PopularCache:
    """A catalog's most popular items, fetched from the retriever now and then; served (filtered in memory)
    while the retriever is down. Empty until the first fetch succeeds."""

    def __init__(self, retrieval: RetrievalPort, catalog: str, size: int) -> None:
        self._retrieval = retrieval
        self._catalog = catalog
        self._size = size
        self._items: tuple[StoredItem, ...] = ()
        self.fetched_at: float | None = None

    async def refresh(self) -> None:
        items = await self._retrieval.popular(self._catalog, self._size, 0, ItemFilter(), [])
        self._items = tuple(items)
        self.fetched_at = time.monotonic()

    def clear(self) -> None:
        """Forgets the counts, for example after a user's events were deleted (the next refresh reloads)."""
        self._items = ()
        self.fetched_at = None

    def page(self, limit: int, offset: int, item_filter: ItemFilter) -> Sequence[StoredItem] | None:
        """Up to `limit` items from `offset` under the filter; None when the cache holds nothing."""
        if self.fetched_at is None:
            return None
        kept = [item for item in self._items if matches(item, item_filter)]
        return kept[offset : offset + limit]
