"""Domain types of the gateway and the ports it needs from the four backends (no gRPC here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from services.common.attributes import AttributeValue
from services.common.errors import UnavailableError

# The longest recommendation id the retriever stores; ids the gateway issues are 32 hex characters.
MAX_RECOMMENDATION_ID_CHARS = 128


# The encoder whose vectors the request under way embeds, searches and scores with (the catalog's serving one
# when the request started); None: nothing checked (a recommender without an EncoderTracker).
SERVING_ENCODER: ContextVar[str | None] = ContextVar("serving_encoder", default=None)


class EncoderChangedError(UnavailableError):
    """The catalog switched encoders while a request was under way (the retriever refused vectors of the one it
    started with); `serving` is the encoder served now. The recommender runs the request again with it."""

    def __init__(self, serving: str) -> None:
        super().__init__("the catalog switched encoders during the call: retry it")
        self.serving = serving


class EncoderSource(Protocol):
    """Where the recommender learns which encoder a catalog serves (the retriever)."""

    async def current(self, catalog: str) -> str | None: ...

    def changed(self, catalog: str, serving: str) -> None: ...


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
    recommendation_id: str = ""
    event_id: str = ""


@dataclass(frozen=True)
class Profile:
    user_id: str
    vector: np.ndarray | None
    events: tuple[HistoryEvent, ...]
    # Times each item was shown to the user since the user last acted on it (for rotation).
    shown_counts: Mapping[str, int] = field(default_factory=dict)


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
    text: str = ""  # what the vector was embedded from, kept by the retriever for a reindex


@dataclass(frozen=True)
class RecordedEvents:
    recorded: int
    # Recommendation ids the events named that no recorded recommendation has (nothing attributed to them).
    unknown_recommendation_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventRecord:
    user_id: str
    item_id: str
    event_type: str
    timestamp: float
    recommendation_id: str = ""
    event_id: str = ""  # empty: derived from the content (services.common.events.derived_event_id)


@dataclass(frozen=True)
class Impression:
    """One page of a recommendation as it was shown."""

    recommendation_id: str
    page: int
    user_id: str
    item_ids: tuple[str, ...]
    experiment: str = ""
    arm: str = ""
    timestamp: float = 0.0
    engaged_item_ids: tuple[str, ...] = ()
    converted_item_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    reason: str
    title: str
    categories: tuple[str, ...]
    # Stage name to score, filled when the caller asked for an explanation.
    stage_scores: Mapping[str, float] = field(default_factory=dict)
    evidence: str = ""
    pinned: bool = False


@dataclass(frozen=True)
class RecommendResult:
    items: tuple[Recommendation, ...]
    has_more: bool
    strategy: str
    model_version: str
    # Backends that failed and were replaced by their fallback ("preprocessor", "embedding", "retriever",
    # "ranker", "impressions"); empty when every stage answered.
    degraded: tuple[str, ...] = ()
    recommendation_id: str = ""
    page: int = 1
    experiment: str = ""
    arm: str = ""
    # Wall time of each stage, milliseconds.
    stage_ms: Mapping[str, float] = field(default_factory=dict)
    # Rules of the request that could not act on this answer, each saying why (see rules.category_warnings).
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchResult:
    items: tuple[Recommendation, ...]
    degraded: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidates:
    """The pool for ranking: the items nearest the target, the proposed items the nearest did not hold, and the
    history's items with their vectors."""

    nearest: list[StoredItem]
    proposed: list[StoredItem]
    history: list[StoredItem]

    @property
    def pool(self) -> list[StoredItem]:
        return [*self.nearest, *self.proposed]


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
    """The retriever, one catalog per call ("" is the default catalog)."""

    async def search(
        self, catalog: str, vector: np.ndarray, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]: ...

    async def candidates(
        self,
        catalog: str,
        vector: np.ndarray,
        limit: int,
        item_filter: ItemFilter,
        exclude_ids: Sequence[str],
        include_ids: Sequence[str],
        history_ids: Sequence[str],
    ) -> Candidates:
        """What ranking needs, in one call: the ``limit`` nearest items, those of ``include_ids`` not among them
        that meet the filter and are not excluded (each with its cosine to ``vector``), and the stored items of
        ``history_ids`` in that order (unknown ones skipped), all with vectors."""
        ...

    async def similar(
        self, catalog: str, item_id: str, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]: ...

    async def popular(
        self,
        catalog: str,
        limit: int,
        offset: int,
        item_filter: ItemFilter,
        exclude_ids: Sequence[str],
        with_vectors: bool = False,
    ) -> list[StoredItem]: ...

    async def get_items(self, catalog: str, item_ids: Sequence[str], skip_missing: bool) -> list[StoredItem]: ...

    async def upsert_items(self, catalog: str, items: Sequence[NewItem]) -> int: ...

    async def append_events(self, catalog: str, user_id: str, events: Sequence[HistoryEvent]) -> list[str]:
        """Appends the events (idempotent per event id); returns the recommendation ids they named that the
        retriever has no impression of."""
        ...

    async def get_profile(self, catalog: str, user_id: str) -> Profile | None: ...

    async def delete_user(self, catalog: str, user_id: str) -> None: ...

    async def record_impressions(self, catalog: str, impressions: Sequence[Impression]) -> None: ...

    async def get_impressions(self, catalog: str, recommendation_id: str) -> list[Impression]:
        """Every recorded page of the recommendation; empty when it is unknown."""
        ...


class RankingPort(Protocol):
    async def score(
        self,
        catalog: str,
        model_version: str,
        user_id: str,
        history: Sequence[StoredItem],
        candidates: Sequence[StoredItem],
    ) -> Ranking | None:
        """None when the ranker has no model for the catalog."""
        ...

    async def suggest(
        self, catalog: str, model_version: str, history_ids: Sequence[str], limit: int
    ) -> list[tuple[str, float]]:
        """Candidates from the model's item graph with their graph scores, best first; empty when the catalog has
        no model or graph."""
        ...
