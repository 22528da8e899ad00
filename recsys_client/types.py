"""What the client takes and returns: plain dataclasses, never protos."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

EventType = Literal["view", "click", "add_to_cart", "purchase"]
AttributeValue = str | float | int | bool


@dataclass(frozen=True)
class Filter:
    """Conditions every returned item meets. Only filterable attributes are accepted (the gateway says which)."""

    categories_any: Sequence[str] = ()
    # Attribute -> accepted values, for example {"brand": ["3M", "Acme"]}.
    keywords: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Attribute -> (lowest, highest), inclusive; None leaves that end open: {"price": (None, 20.0)}.
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    # Attribute -> required value: {"in_stock": True}.
    flags: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Boost:
    """Adds `weight` (standard deviations of the page's scores, -10 to 10) to items in a category, or to items
    whose attribute `field` equals `value`."""

    weight: float
    category: str = ""
    field: str = ""
    value: str = ""


@dataclass(frozen=True)
class Pin:
    """Places an item at a 1-based position of the first page."""

    item_id: str
    position: int


@dataclass(frozen=True)
class CatalogItem:
    """A catalog record to add or replace."""

    item_id: str
    title: str
    description: str = ""
    categories: Sequence[str] = ()
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """One interaction. `time` defaults to when the gateway receives it; `recommendation_id` attributes the event
    to the recommendation that showed the item; `event_id` names it, so that recording it again counts once (the
    client gives each event without one a new id)."""

    user_id: str
    item_id: str
    type: EventType = "view"
    time: datetime | None = None
    recommendation_id: str = ""
    event_id: str = ""


@dataclass(frozen=True)
class Explanation:
    """Per-stage scores of one item (asked for with explain=True)."""

    stage_scores: Mapping[str, float]
    # A history or context item id, "query", "graph", "popularity", "boost" or "pin".
    evidence: str
    arm: str


@dataclass(frozen=True)
class RecommendedItem:
    item_id: str
    score: float
    reason: str
    title: str
    categories: tuple[str, ...]
    pinned: bool
    explanation: Explanation | None


@dataclass(frozen=True)
class Recommendations:
    """One page of a recommendation; pass `next_page_token` as page_token for the next (empty: no more)."""

    items: tuple[RecommendedItem, ...]
    next_page_token: str
    # "personalised", "query", "personalised+query" or "popular".
    strategy: str
    model_version: str
    # True when a backend failed and its fallback answered; degraded_stages names them.
    degraded: bool
    degraded_stages: tuple[str, ...]
    # Send it with the events the recommendation leads to (Event.recommendation_id).
    recommendation_id: str
    experiment: str
    arm: str
    page: int
    # Wall time per stage in milliseconds ("total", "retrieval", "ranker", ...).
    stage_ms: Mapping[str, float]
    # Rules of the request that could not act, each saying why (a category rule on items stored without
    # categories, ...); empty when every rule acted.
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class SimilarItems:
    items: tuple[RecommendedItem, ...]
    # Rules of the request that could not act, each saying why (a categories_any that left no item).
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class SearchResults:
    items: tuple[RecommendedItem, ...]
    degraded: bool
    degraded_stages: tuple[str, ...]
    # As SimilarItems.warnings.
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class UpsertResult:
    upserted: int
    # Items whose text was cut to the model's token budget.
    truncated: int


@dataclass(frozen=True)
class RecordResult:
    # Events stored; one recorded before under its event_id counts here but is stored once.
    recorded: int
    # Recommendation ids the events named that the suite never issued: nothing was attributed to them.
    unknown_recommendation_ids: tuple[str, ...]
