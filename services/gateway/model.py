"""Domain types of the gateway and the ports it needs from the four backends (no gRPC here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from services.common.attributes import AttributeValue
from services.common.errors import UnavailableError


class BackendUnavailableError(UnavailableError):
    """A backend did not answer (down, overloaded past its deadline); `stage` names it, so the domain can
    pick that stage's fallback."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class ItemFilter:
    categories_any: tuple[str, ...] = ()
    keywords: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    flags: Mapping[str, bool] = field(default_factory=dict)

    def size(self) -> int:
        return (
            len(self.categories_any) + sum(len(v) for v in self.keywords.values()) + len(self.ranges) + len(self.flags)
        )


@dataclass(frozen=True)
class StoredItem:
    item_id: str
    score: float
    payload: Mapping[str, Any]
    vector: np.ndarray | None = None

    @property
    def title(self) -> str:
        return str(self.payload.get("title", ""))

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.payload.get("categories", ()) or ())


@dataclass(frozen=True)
class HistoryEvent:
    item_id: str
    event_type: str
    timestamp: float
    weight: float


@dataclass(frozen=True)
class Profile:
    user_id: str
    vector: np.ndarray | None
    events: tuple[HistoryEvent, ...]


@dataclass(frozen=True)
class CatalogRecord:
    item_id: str
    title: str
    description: str = ""
    categories: tuple[str, ...] = ()
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemText:
    text: str
    truncated: bool


@dataclass(frozen=True)
class NewItem:
    item_id: str
    vector: np.ndarray
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class EventRecord:
    user_id: str
    item_id: str
    event_type: str
    timestamp: float


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    reason: str
    title: str
    categories: tuple[str, ...]


@dataclass(frozen=True)
class RecommendResult:
    items: tuple[Recommendation, ...]
    next_offset: int | None
    strategy: str
    model_version: str
    # Backends that failed and were replaced by their fallback ("preprocessor", "embedding", "retriever",
    # "ranker"); empty when every stage answered.
    degraded: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchResult:
    items: tuple[Recommendation, ...]
    degraded: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ranking:
    scores: np.ndarray
    model_version: str


class TextPort(Protocol):
    async def clean_query(self, text: str) -> str: ...

    async def build_item_texts(self, records: Sequence[CatalogRecord]) -> list[ItemText]: ...


class EmbeddingPort(Protocol):
    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def embed_query(self, text: str) -> np.ndarray:
        """One query's vector, on a short deadline: the caller has a fallback."""
        ...


class RetrievalPort(Protocol):
    async def search(
        self, vector: np.ndarray, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]: ...

    async def similar(
        self, item_id: str, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]: ...

    async def popular(
        self, limit: int, offset: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]: ...

    async def get_items(self, item_ids: Sequence[str], skip_missing: bool) -> list[StoredItem]: ...

    async def upsert_items(self, items: Sequence[NewItem]) -> int: ...

    async def append_events(self, user_id: str, events: Sequence[HistoryEvent]) -> None: ...

    async def get_profile(self, user_id: str) -> Profile | None: ...

    async def delete_user(self, user_id: str) -> None: ...


class RankingPort(Protocol):
    async def score(self, user_id: str, history: Sequence[StoredItem], candidates: Sequence[StoredItem]) -> Ranking: ...
