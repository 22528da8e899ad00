"""Domain types of the retriever's storage layer, the `VectorStore` protocol both backends implement, and the
helpers they share (validation, id mapping, payload conversion, a readers-writer lock).

No gRPC and no Qdrant imports here: the backends (`edge_store`, `client_store`) translate these types into
their engine's, and the servicer translates protos into these.
"""

from __future__ import annotations

import functools
import math
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import numpy as np

from services.common.encoders import SERVING_ENCODER_KEY, encoder_token
from services.common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from services.common.input_rules import check_id

__all__ = [
    "DEFAULT_SCHEMA",
    "ITEM_ID_FIELD",
    "ITEM_TEXT_FIELD",
    "POPULARITY_FIELD",
    "USER_ID_FIELD",
    "DimensionMismatchError",
    "EncoderMismatchError",
    "EncoderState",
    "FieldType",
    "Filter",
    "Impression",
    "InvalidFilterError",
    "InvalidVectorError",
    "Item",
    "NotFoundError",
    "PayloadSchema",
    "ReadWriteLock",
    "ScoredItem",
    "SearchQuery",
    "StoreInfo",
    "UserEvent",
    "UserProfile",
    "VectorStore",
    "item_point_id",
    "user_point_id",
]


class FieldType(StrEnum):
    """Type of a filterable payload field; each one gets a payload index of that type."""

    KEYWORD = "keyword"
    FLOAT = "float"
    INTEGER = "integer"
    BOOL = "bool"


PayloadSchema = Mapping[str, FieldType]

DEFAULT_SCHEMA: PayloadSchema = {
    "categories": FieldType.KEYWORD,
    "brand": FieldType.KEYWORD,
    "price": FieldType.FLOAT,
    "rating": FieldType.FLOAT,
    "in_stock": FieldType.BOOL,
    "popularity": FieldType.INTEGER,
}

ITEM_ID_FIELD = "item_id"
# The text the item's vector was embedded from (kept for a reindex with another encoder; never shown to callers).
ITEM_TEXT_FIELD = "item_text"
# Set on a served item written while a staged copy exists, cleared when the staged copy takes the same item: a
# switch waits until no served item is ahead of its staged copy.
STAGED_BEHIND_FIELD = "staged_behind"
USER_ID_FIELD = "user_id"
POPULARITY_FIELD = "popularity"
EVENTS_FIELD = "events"
CATEGORIES_FIELD = "categories"

# Point ids in Qdrant must be ints or UUIDs: our string ids map through uuid5, one namespace per kind, so an
# item and a user with the same string id never collide.
ITEM_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "recsys:retriever:item")
USER_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "recsys:retriever:user")

MAX_ID_LENGTH = 256
MAX_RECOMMENDATION_ID = 128


# ---------------------------------------------------------------------------------------------------------
# Errors (subclasses of the shared service errors, so one table maps them to status codes)
# ---------------------------------------------------------------------------------------------------------


class InvalidFilterError(InvalidArgumentError):
    """A filter names a field that is not filterable, uses the wrong kind of condition for a field's type,
    or has bad bounds."""


class InvalidVectorError(InvalidArgumentError):
    """A vector is malformed (not finite, all zeros where a direction is needed)."""


class DimensionMismatchError(InvalidVectorError):
    """A vector's length differs from the store's dimension."""


class EncoderMismatchError(FailedPreconditionError):
    """Vectors of one encoder met a collection of another's (the serving encoder was switched meanwhile).
    `serving` names the encoder the catalog serves now, so a caller can embed again and retry."""

    def __init__(self, message: str, serving: str) -> None:
        super().__init__(message)
        self.serving = serving

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((SERVING_ENCODER_KEY, encoder_token(self.serving)),)


# ---------------------------------------------------------------------------------------------------------
# Domain types
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """A catalogue item. `payload` holds title, categories, brand, other attributes and `popularity` (kept by
    the store: an upsert keeps an existing item's popularity, a new item starts at 0)."""

    item_id: str
    vector: tuple[float, ...] | None
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Filter:
    """Conditions on payload fields, all of which must hold.

    - `categories_any`: the item has at least one of these categories.
    - `keywords`: for each keyword field, the item has at least one of the values.
    - `ranges`: for each numeric field, `(gte, lte)`; `None` leaves that side open.
    - `flags`: for each bool field, the value it must have.
    """

    categories_any: tuple[str, ...] = ()
    keywords: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    flags: Mapping[str, bool] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.categories_any or self.keywords or self.ranges or self.flags)


@dataclass(frozen=True, slots=True)
class ScoredItem:
    """One result: cosine similarity for search and recommend, popularity for `popular`. The vector (when asked
    for) is a float32 array: it leaves the process as bytes, and turning it into 384 Python floats on the way was
    half of a search's cost."""

    item_id: str
    score: float
    payload: Mapping[str, Any]
    vector: np.ndarray | None = None
    payload_json: bytes = b""  # the payload as compact JSON, where the store keeps it encoded


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """One nearest-neighbour query of a batch."""

    vector: Sequence[float]
    limit: int
    filter: Filter | None = None
    exclude_ids: Sequence[str] = ()
    offset: int = 0
    with_vectors: bool = False
    only_ids: Sequence[str] = ()  # not empty: results come only from these items


@dataclass(frozen=True, slots=True)
class UserEvent:
    """A user's interaction with an item; `weight` (above 0) scales its pull on the profile.
    `recommendation_id` names the recommendation it came from (empty: none), for attribution. `event_id` names
    the event: the same id recorded again for the user counts once (empty: derived from the content)."""

    item_id: str
    event_type: str
    timestamp: float
    weight: float = 1.0
    recommendation_id: str = ""
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class UserProfile:
    """A user's history (oldest first, at most the store's `max_history` newest events) and the profile
    vector computed from it (None when no event points anywhere). `shown_counts`: times each item was shown
    on the user's newest recorded pages after the user's last event on it, by time (the most recently shown
    items, oldest first). A user with impressions but no events has a profile with no events and no vector."""

    user_id: str
    vector: tuple[float, ...] | None
    events: tuple[UserEvent, ...]
    shown_counts: Mapping[str, int] = field(default_factory=dict)
    encoder_version: str = ""  # the encoder whose item vectors `vector` was computed from


@dataclass(frozen=True, slots=True)
class Impression:
    """One shown page of a recommendation, keyed by (recommendation_id, page). `user_id` is empty for an
    anonymous caller. `engaged_item_ids` (shown items with an event from this recommendation, of any type) and
    `converted_item_ids` (with a "purchase") are read from the events when the impression is read; callers'
    values for them are ignored."""

    recommendation_id: str
    page: int
    user_id: str
    item_ids: tuple[str, ...]
    experiment: str = ""
    arm: str = ""
    timestamp: float = 0.0
    engaged_item_ids: tuple[str, ...] = ()
    converted_item_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EncoderState:
    """Which encoder's vectors a catalog's items carry. `serving` is searched ("" is the base model). `staged`,
    when not None, is a second copy of the items embedded by another encoder: filled by a reindex, or the
    previous encoder's kept for rollback after a switch. Deletes and popularity reach both copies; upserts
    reach the copy whose encoder made their vectors."""

    serving: str
    staged: str | None = None
    staged_items: int = 0


def encoder_label(version: str | None) -> str:
    return "the base encoder" if version == "" else f"encoder {version!r}"


def check_encoder(state: EncoderState, version: str | None) -> None:
    """EncoderMismatchError unless vectors of ``version`` belong to the served copy (None: unchecked, callers
    from before encoder versions)."""
    if version is not None and version != state.serving:
        staged = "" if state.staged is None else f" (staged: {encoder_label(state.staged)})"
        raise EncoderMismatchError(
            f"vectors of {encoder_label(version)} sent, but this catalog serves {encoder_label(state.serving)}"
            f"{staged}: embed with the serving encoder and send again",
            state.serving,
        )


def check_staged(state: EncoderState, version: str | None) -> None:
    """FailedPreconditionError unless ``version`` names the staged copy (a reindex writing into it)."""
    if state.staged is None or version != state.staged:
        raise FailedPreconditionError(
            f"no staged copy of {encoder_label(version)} in this catalog (it serves {encoder_label(state.serving)}"
            + ("" if state.staged is None else f", {encoder_label(state.staged)} is staged")
            + "): stage it with StageEncoder (`recsys reindex`) first"
        )


def reads_staged(state: EncoderState, version: str | None) -> bool:
    """Whether a read naming ``version`` (None: the served copy) reads the staged copy; EncoderMismatchError
    when neither copy is that encoder's."""
    if version is not None and version != state.serving and version == state.staged:
        return True
    check_encoder(state, version)
    return False


def check_caught_up(version: str, served: int, staged: int, ahead: int) -> None:
    """FailedPreconditionError unless the staged copy holds every served item as the served copy holds it."""
    if staged != served or ahead:
        behind = f"{ahead} served items were written after the staged copy took them; " if ahead else ""
        raise FailedPreconditionError(
            f"the staged copy of {encoder_label(version)} holds {staged} items, the served one {served}; {behind}"
            f"run `recsys reindex --encoder {version or 'base'}` again to catch it up"
        )


@dataclass(frozen=True, slots=True)
class StoreInfo:
    backend: str
    items: int
    users: int
    indexed_vectors: int
    dimension: int
    distance: str
    payload_indexes: tuple[str, ...]
    index_ready: bool


@runtime_checkable
class VectorStore(Protocol):
    """Items and user profiles in a vector engine. Every method is synchronous, blocking and thread-safe:
    call it from a worker thread, never from the event loop."""

    @property
    def dimension(self) -> int: ...

    @property
    def schema(self) -> PayloadSchema: ...

    @property
    def index_ready(self) -> bool: ...

    def upsert_items(self, items: Sequence[Item], encoder_version: str | None = None, staged: bool = False) -> int:
        """Writes the items into the served copy, whose encoder ``encoder_version`` must be (None: unchecked;
        EncoderMismatchError otherwise), or with ``staged`` into the staged copy, whose encoder it must be
        (FailedPreconditionError otherwise); the staged copy takes only items the served one holds. Returns how
        many were written."""
        ...

    def delete_items(self, ids: Sequence[str]) -> int:
        """Deletes from both copies; returns how many the serving copy held."""
        ...

    def get_items(
        self,
        ids: Sequence[str],
        with_vectors: bool = False,
        skip_missing: bool = False,
        encoder_version: str | None = None,
    ) -> list[Item]:
        """Items in the order asked; unknown ids raise NotFoundError, or are left out with skip_missing;
        EncoderMismatchError when ``encoder_version`` (None: unchecked) is not the serving one."""
        ...

    def count_items(self) -> int: ...

    def search(self, queries: Sequence[SearchQuery], encoder_version: str | None = None) -> list[list[ScoredItem]]:
        """Nearest items of the serving copy; EncoderMismatchError when the query vectors are of another
        encoder than it serves (None: unchecked)."""
        ...

    def list_items(self, encoder_version: str | None, offset: str, limit: int) -> tuple[list[Item], str]:
        """A page of the items of one copy (None: serving) by id, with their stored payloads (the embedded text
        included, no vectors), and the next page's offset ("" after the last)."""
        ...

    def encoders(self) -> EncoderState: ...

    def stage_encoder(self, version: str) -> EncoderState:
        """Creates an empty staged copy for ``version``'s vectors (nothing when it is staged already);
        FailedPreconditionError while a copy of another encoder is staged, or when it serves already."""
        ...

    def switch_encoder(self, version: str) -> EncoderState:
        """Makes the staged copy of ``version`` the served one, at once, keeping the other staged for rollback;
        FailedPreconditionError when ``version`` is not staged or its copy lacks items the serving one has."""
        ...

    def drop_staged_encoder(self, version: str) -> EncoderState:
        """Deletes the staged copy of ``version``; FailedPreconditionError when it is not the staged one."""
        ...

    def recommend(
        self,
        positive_ids: Sequence[str],
        negative_ids: Sequence[str] = (),
        limit: int = 10,
        filter: Filter | None = None,
        exclude_ids: Sequence[str] = (),
    ) -> list[ScoredItem]: ...

    def popular(
        self,
        limit: int = 10,
        filter: Filter | None = None,
        exclude_ids: Sequence[str] = (),
        offset: int = 0,
    ) -> list[ScoredItem]: ...

    def append_user_events(self, user_id: str, events: Sequence[UserEvent]) -> UserProfile:
        """Stores the events (each event id once per user, however often it is sent) and returns the profile,
        which covers them."""
        ...

    def unknown_recommendations(self, events: Sequence[UserEvent]) -> list[str]:
        """The recommendation ids the events name that no recorded impression has (nothing to attribute to)."""
        ...

    def get_user(self, user_id: str) -> UserProfile: ...

    def delete_user(self, user_id: str) -> None: ...

    def count_users(self) -> int: ...

    def record_impressions(self, impressions: Sequence[Impression]) -> None:
        """Stores shown pages durably, each replacing the same (recommendation_id, page); with a user id, a page
        counts towards that user's shown counts (once per key: a retry counts nothing again). Nothing is stored
        when one page is invalid."""
        ...

    def get_impressions(self, recommendation_id: str) -> list[Impression]:
        """Every page of the recommendation, by page; NotFoundError when there is none."""
        ...

    def list_impressions(self, experiment: str, limit: int, page_token: str) -> tuple[list[Impression], str]:
        """A page of impressions (of one experiment when given) in a stable order, and the next page's token
        ("" after the last)."""
        ...

    def info(self) -> StoreInfo: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------------------
# Id mapping
# ---------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65_536)
def item_point_id(item_id: str) -> uuid.UUID:
    # Cached: the same ids come back in every query (history, exclusions, candidates), and the SHA-1 of
    # uuid5 showed in the retriever's profile.
    return uuid.uuid5(ITEM_NAMESPACE, item_id)


def user_point_id(user_id: str) -> uuid.UUID:
    return uuid.uuid5(USER_NAMESPACE, user_id)


def validate_id(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string, got {value!r}")
    return check_id(value, what, MAX_ID_LENGTH)


def validate_ids(ids: Sequence[str], what: str) -> list[str]:
    if isinstance(ids, str):
        raise InvalidArgumentError(f"{what}s must be a sequence of strings, not one string")
    return [validate_id(i, what) for i in ids]


def unique(ids: Sequence[str]) -> list[str]:
    """The ids without repeats, first occurrence kept."""
    return list(dict.fromkeys(ids))


def not_found(kind: str, missing: Sequence[str]) -> NotFoundError:
    shown = ", ".join(repr(m) for m in missing[:20])
    more = f" (and {len(missing) - 20} more)" if len(missing) > 20 else ""
    noun = kind if len(missing) == 1 else f"{kind}s"
    return NotFoundError(f"unknown {noun}: {shown}{more}")


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


def in_requested_order(wanted: Sequence[str], found: Mapping[str, Item], skip_missing: bool) -> list[Item]:
    missing = [i for i in unique(wanted) if i not in found]
    if missing and not skip_missing:
        raise not_found("item", missing)
    return [found[i] for i in wanted if i in found]


def validate_vector(vector: Sequence[float] | None, dimension: int, what: str = "vector") -> tuple[float, ...]:
    """Checks length and finiteness; returns the vector as a tuple of floats."""
    if vector is None:
        raise InvalidVectorError(f"{what} is missing: give {dimension} floats")
    if isinstance(vector, str | bytes):
        raise InvalidVectorError(f"{what} must be a sequence of {dimension} floats")
    values = tuple(map(float, vector))
    if len(values) != dimension:
        raise DimensionMismatchError(
            f"{what} has {len(values)} values but the store's dimension is {dimension}: "
            f"send vectors from the same embedding model the store was created for"
        )
    # The sum is finite when every value is (a sum that overflows is checked value by value and passes).
    bad = [] if math.isfinite(sum(values)) else [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise InvalidVectorError(
            f"{what} has non-finite values (NaN or infinity) at positions {bad[:10]}: send finite floats"
        )
    if not any(values):
        raise InvalidVectorError(f"{what} is all zeros and has no direction for cosine similarity")
    return values


def validate_limit(limit: int, offset: int = 0, max_limit: int = 10_000) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1 or limit > max_limit:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {max_limit}, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or offset > max_limit:
        raise InvalidArgumentError(f"offset must be an integer from 0 to {max_limit}, got {offset!r}")


def _filterable(schema: PayloadSchema) -> str:
    return ", ".join(f"{name} ({kind.value})" for name, kind in sorted(schema.items()))


def _field_type(name: str, schema: PayloadSchema, condition: str) -> FieldType:
    kind = schema.get(name)
    if kind is None:
        raise InvalidFilterError(f"{condition} names unknown field {name!r}; filterable fields: {_filterable(schema)}")
    return kind


def validate_filter(filter: Filter | None, schema: PayloadSchema) -> None:
    """Raises InvalidFilterError naming what is wrong: an unknown field (listing the filterable ones), a
    condition that does not fit the field's type, empty value lists, NaN or crossed bounds."""
    if filter is None:
        return
    if filter.categories_any:
        kind = _field_type(CATEGORIES_FIELD, schema, "categories_any")
        if kind is not FieldType.KEYWORD:
            raise InvalidFilterError(f"categories_any needs a keyword field 'categories', not {kind.value}")
        _check_strings(CATEGORIES_FIELD, filter.categories_any)
    for name, values in filter.keywords.items():
        kind = _field_type(name, schema, "keyword filter")
        if kind is not FieldType.KEYWORD:
            hint = "use a range" if kind in (FieldType.FLOAT, FieldType.INTEGER) else "use a flag"
            raise InvalidFilterError(f"keyword filter on {name!r}, which is a {kind.value} field: {hint}")
        if isinstance(values, str):
            raise InvalidFilterError(f"keyword filter on {name!r} takes a tuple of values, not one string")
        if not values:
            raise InvalidFilterError(f"keyword filter on {name!r} has no values: give at least one")
        _check_strings(name, values)
    for name, bounds in filter.ranges.items():
        kind = _field_type(name, schema, "range filter")
        if kind not in (FieldType.FLOAT, FieldType.INTEGER):
            hint = "use a keyword filter" if kind is FieldType.KEYWORD else "use a flag"
            raise InvalidFilterError(f"range filter on {name!r}, which is a {kind.value} field: {hint}")
        if len(bounds) != 2:
            raise InvalidFilterError(f"range filter on {name!r} must be (gte, lte)")
        gte, lte = bounds
        if gte is None and lte is None:
            raise InvalidFilterError(f"range filter on {name!r} has no bounds: give gte, lte or both")
        for side, bound in (("gte", gte), ("lte", lte)):
            if bound is not None and (
                isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound)
            ):
                raise InvalidFilterError(f"range filter on {name!r}: {side} must be a finite number, got {bound}")
        if gte is not None and lte is not None and gte > lte:
            raise InvalidFilterError(f"range filter on {name!r}: lower bound {gte} is above upper bound {lte}")
    for name, flag in filter.flags.items():
        kind = _field_type(name, schema, "flag filter")
        if kind is not FieldType.BOOL:
            raise InvalidFilterError(f"flag filter on {name!r}, which is a {kind.value} field, not bool")
        if not isinstance(flag, bool):
            raise InvalidFilterError(f"flag filter on {name!r} must be true or false, got {flag!r}")


def _check_strings(name: str, values: Sequence[str]) -> None:
    for value in values:
        if not isinstance(value, str):
            raise InvalidFilterError(f"filter on {name!r}: values must be strings, got {value!r}")


def validate_payload(payload: Mapping[str, Any], schema: PayloadSchema, item_id: str) -> None:
    """Values of schema fields must have the field's type, or the payload index silently skips them."""
    for name, kind in schema.items():
        if name == POPULARITY_FIELD or name not in payload or payload[name] is None:
            continue
        value = payload[name]
        ok: bool
        if kind is FieldType.KEYWORD:
            ok = isinstance(value, str) or (isinstance(value, list | tuple) and all(isinstance(v, str) for v in value))
        elif kind is FieldType.FLOAT:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        elif kind is FieldType.INTEGER:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, bool)
        if not ok:
            raise InvalidArgumentError(
                f"item {item_id!r}: payload field {name!r} must be {_describe(kind)}, got {value!r}"
            )


def _describe(kind: FieldType) -> str:
    return {
        FieldType.KEYWORD: "a string or a list of strings",
        FieldType.FLOAT: "a finite number",
        FieldType.INTEGER: "an integer",
        FieldType.BOOL: "true or false",
    }[kind]


def validate_items(items: Sequence[Item], dimension: int, schema: PayloadSchema) -> list[Item]:
    """Checks ids, vectors and payload types; returns the items with vectors as float tuples. A later item
    with the same id wins, as it would in the engine."""
    out: dict[str, Item] = {}
    for item in items:
        item_id = validate_id(item.item_id, "item id")
        vector = validate_vector(item.vector, dimension, f"vector of item {item_id!r}")
        if not isinstance(item.payload, Mapping):
            raise InvalidArgumentError(f"item {item_id!r}: payload must be a mapping")
        validate_payload(item.payload, schema, item_id)
        out.pop(item_id, None)
        out[item_id] = Item(item_id=item_id, vector=vector, payload=item.payload)
    return list(out.values())


def validate_search_query(query: SearchQuery, dimension: int, schema: PayloadSchema, index: int) -> None:
    validate_vector(query.vector, dimension, f"vector of query {index}")
    validate_limit(query.limit, query.offset)
    validate_filter(query.filter, schema)
    validate_ids(query.exclude_ids, "excluded item id")
    validate_ids(query.only_ids, "only_ids item id")


# ---------------------------------------------------------------------------------------------------------
# Payload conversion shared by the backends
# ---------------------------------------------------------------------------------------------------------


def item_payload(item: Item, popularity: int) -> dict[str, Any]:
    """The stored payload: the item's own, with the store-maintained fields set (lists for tuples)."""
    payload = {k: list(v) if isinstance(v, tuple) else v for k, v in item.payload.items()}
    payload[ITEM_ID_FIELD] = item.item_id
    payload[POPULARITY_FIELD] = popularity
    return payload


def public_payload(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    """The payload shown to callers: without the internal id and text fields."""
    if not payload:
        return {}
    public = dict(payload)
    for internal in (ITEM_ID_FIELD, ITEM_TEXT_FIELD, STAGED_BEHIND_FIELD):
        public.pop(internal, None)
    return public


def listed_item(payload: Mapping[str, Any] | None) -> Item:
    """An item as `list_items` gives it: its stored payload (text and marks included) less the id, no vector."""
    stored = dict(payload or {})
    return Item(payload_item_id(stored), None, {k: v for k, v in stored.items() if k != ITEM_ID_FIELD})


def staged_writes(
    items: Sequence[Item], served: Mapping[str, Mapping[str, Any]]
) -> tuple[list[Item], list[dict[str, Any]], list[str]]:
    """A write into the staged copy, given the served copy's payloads of the items: the items it holds (one
    deleted meanwhile is not brought back), their payloads with the served popularity, and the ids the served copy
    marks ahead whose payload and text the write now matches (their mark is cleared)."""
    kept = [item for item in items if item.item_id in served]
    payloads = [item_payload(item, popularity_of(served[item.item_id])) for item in kept]
    caught_up = [
        item.item_id
        for item, payload in zip(kept, payloads, strict=True)
        if served[item.item_id].get(STAGED_BEHIND_FIELD) and item_content(payload) == item_content(served[item.item_id])
    ]
    return kept, payloads, caught_up


def item_content(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    """What an item's copies must agree on: its payload and text, without what the store keeps per copy."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in (payload or {}).items()
        if k not in (ITEM_ID_FIELD, POPULARITY_FIELD, STAGED_BEHIND_FIELD)
    }


def as_vector(raw: object) -> tuple[float, ...] | None:
    """The default (unnamed) dense vector of an engine record, or None."""
    if raw is None:
        return None
    if isinstance(raw, dict):
        raw = raw.get("")
        if raw is None:
            return None
    if isinstance(raw, list | tuple):
        if not raw:
            return None
        # The engines give Python floats; anything else is converted.
        return tuple(raw) if type(raw[0]) is float else tuple(map(float, raw))
    return None


def events_from_payload(raw: object) -> tuple[UserEvent, ...]:
    """A history as the layout before the event log kept it in the user's payload (a list of objects)."""
    if not isinstance(raw, list):
        return ()
    return tuple(
        UserEvent(
            item_id=str(e["item_id"]),
            event_type=str(e["event_type"]),
            timestamp=float(e["timestamp"]),
            weight=float(e["weight"]),
            recommendation_id=str(e.get("recommendation_id", "")),
        )
        for e in raw
        if isinstance(e, dict)
    )


def popularity_of(payload: Mapping[str, Any] | None) -> int:
    value = (payload or {}).get(POPULARITY_FIELD, 0)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def validate_store_settings(dimension: int, max_history: int, half_life_events: float) -> None:
    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
        raise InvalidArgumentError(f"dimension must be a positive integer, got {dimension!r}")
    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
        raise InvalidArgumentError(f"max_history must be a positive integer, got {max_history!r}")
    if not math.isfinite(half_life_events) or half_life_events <= 0:
        raise InvalidArgumentError(f"half_life_events must be a positive number, got {half_life_events!r}")


# ---------------------------------------------------------------------------------------------------------
# A readers-writer lock (writer preferring): many searches at once, one exclusive holder for shard swaps
# ---------------------------------------------------------------------------------------------------------


class ReadWriteLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def payload_item_id(payload: Mapping[str, Any] | None) -> str:
    return str((payload or {}).get(ITEM_ID_FIELD, ""))


def float32_vector(raw: object) -> np.ndarray | None:
    """An engine record's default vector as a float32 array, or None."""
    vector = as_vector(raw)
    return None if vector is None else np.asarray(vector, dtype=np.float32)


def scored_item(point: Any, score: float, with_vector: bool) -> ScoredItem:
    """A result from either engine's point type (both carry `.payload` and `.vector`)."""
    return ScoredItem(
        item_id=payload_item_id(point.payload),
        score=float(score),
        payload=public_payload(point.payload),
        vector=float32_vector(point.vector) if with_vector else None,
    )
