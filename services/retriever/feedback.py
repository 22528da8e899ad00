"""The feedback log's logic, shared by both backends: impression validation, point ids and payloads, the
replace-on-retry rule, attribution of events to shown items, users' shown counts, and page tokens.

An impression is one point (no vector) in a third collection or shard, `feedback`, keyed by
uuid5(recommendation_id, page); its payload has the fields of `Impression`. `recommendation_id`, `user_id` and
`experiment` have keyword indexes (the filters of GetImpressions, DeleteUser and ListImpressions). The backends
only run the engine calls.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from services.common.errors import InvalidArgumentError
from services.retriever.store import (
    MAX_RECOMMENDATION_ID,
    USER_ID_FIELD,
    Impression,
    UserEvent,
    unique,
    validate_id,
)

IMPRESSION_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "recsys:retriever:impression")
RECOMMENDATION_FIELD = "recommendation_id"
EXPERIMENT_FIELD = "experiment"
# Keyword payload indexes of the feedback collection: the fields its filters use.
INDEXED_FIELDS = (RECOMMENDATION_FIELD, USER_ID_FIELD, EXPERIMENT_FIELD)
# A user's shown counts, in the user's payload: one JSON string of [[item_id, count], ...], least recently shown
# first. A string, not a list of objects: the engines convert payloads value by value, and rewriting 500 small
# objects on every recorded page was a tenth of the retriever's CPU under Recommend load (5 ms vs 0.2 ms per
# read and write). Data written as the older list of {"item_id", "count"} objects is still read.
SHOWN_FIELD = "shown"
MAX_SHOWN = 500
MAX_LABEL = 64
MAX_LIST_LIMIT = 1000
PURCHASE = "purchase"


def impression_point_id(recommendation_id: str, page: int) -> uuid.UUID:
    return uuid.uuid5(IMPRESSION_NAMESPACE, json.dumps([recommendation_id, page]))


# -- validation --------------------------------------------------------------------------------------------


def validate_recommendation_id(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_RECOMMENDATION_ID:
        raise InvalidArgumentError(
            f"recommendation_id must be 1 to {MAX_RECOMMENDATION_ID} characters, got {str(value)[:40]!r}"
            f"{'...' if isinstance(value, str) and len(value) > 40 else ''}"
        )
    return value


def _validate_label(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_LABEL:
        raise InvalidArgumentError(f"{what} must be at most {MAX_LABEL} characters")
    return value


def validate_impression(impression: Impression, max_items: int | None = None) -> Impression:
    """The impression as stored: checked, attribution fields cleared (the store keeps those)."""
    validate_recommendation_id(impression.recommendation_id)
    page = impression.page
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise InvalidArgumentError(f"page must be 1 or more (pages count from 1), got {page!r}")
    if impression.user_id:
        validate_id(impression.user_id, "user id")
    items = tuple(impression.item_ids)
    if max_items is not None and len(items) > max_items:
        raise InvalidArgumentError(
            f"the impression shows {len(items)} items; the limit is {max_items} (RETRIEVER_MAX_BATCH): record "
            f"the page as shown, or split it into pages"
        )
    for item_id in items:
        validate_id(item_id, "shown item id")
    _validate_label(impression.experiment, "experiment")
    _validate_label(impression.arm, "arm")
    ts = impression.timestamp
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise InvalidArgumentError(f"timestamp must be a finite number of Unix seconds, got {ts!r}")
    return replace(impression, item_ids=items, timestamp=float(ts), engaged_item_ids=(), converted_item_ids=())


def validate_list(experiment: str, limit: int, page_token: str) -> str | None:
    """Checks a ListImpressions request; returns the point id to start from (None: the beginning)."""
    _validate_label(experiment, "experiment")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidArgumentError(f"limit must be from 1 to {MAX_LIST_LIMIT} impressions per page, got {limit!r}")
    if not page_token:
        return None
    try:
        return str(uuid.UUID(page_token))
    except (ValueError, TypeError, AttributeError):
        raise InvalidArgumentError(
            "page_token is not one this service gave out: pass next_page_token of the previous response, or "
            "leave it empty for the first page"
        ) from None


# -- payloads ----------------------------------------------------------------------------------------------


def to_payload(impression: Impression) -> dict[str, Any]:
    return {
        RECOMMENDATION_FIELD: impression.recommendation_id,
        "page": impression.page,
        USER_ID_FIELD: impression.user_id,
        "item_ids": list(impression.item_ids),
        EXPERIMENT_FIELD: impression.experiment,
        "arm": impression.arm,
        "timestamp": impression.timestamp,
        "engaged_item_ids": list(impression.engaged_item_ids),
        "converted_item_ids": list(impression.converted_item_ids),
    }


def _strings(raw: object) -> tuple[str, ...]:
    return tuple(str(v) for v in raw) if isinstance(raw, list | tuple) else ()


def from_payload(payload: Mapping[str, Any] | None) -> Impression:
    p = payload or {}
    return Impression(
        recommendation_id=str(p.get(RECOMMENDATION_FIELD, "")),
        page=int(p.get("page", 0)),
        user_id=str(p.get(USER_ID_FIELD, "")),
        item_ids=_strings(p.get("item_ids")),
        experiment=str(p.get(EXPERIMENT_FIELD, "")),
        arm=str(p.get("arm", "")),
        timestamp=float(p.get("timestamp", 0.0)),
        engaged_item_ids=_strings(p.get("engaged_item_ids")),
        converted_item_ids=_strings(p.get("converted_item_ids")),
    )


def by_page(impressions: Iterable[Impression]) -> list[Impression]:
    return sorted(impressions, key=lambda i: i.page)


# -- recording and attribution -----------------------------------------------------------------------------


def replacement(old: Impression | None, new: Impression) -> tuple[Impression, list[str]]:
    """What to store for `new` when `old` has the same key, and which items to count as shown to new's user.

    A retry of the same page keeps the attribution of items still shown and counts only items the user was
    not already counted for by the old copy, so recording twice changes nothing."""
    if old is None:
        return new, unique(list(new.item_ids))
    shown = set(new.item_ids)
    stored = replace(
        new,
        engaged_item_ids=tuple(i for i in old.engaged_item_ids if i in shown),
        converted_item_ids=tuple(i for i in old.converted_item_ids if i in shown),
    )
    counted_before = set(old.item_ids) if old.user_id == new.user_id else set()
    return stored, [i for i in unique(list(new.item_ids)) if i not in counted_before]


def attribute(impressions: Sequence[Impression], events: Sequence[UserEvent]) -> list[Impression]:
    """The impressions an event changed: a shown item with an event from that recommendation is engaged, and
    converted on a "purchase". Events of items not shown (or of unknown recommendations) change nothing."""
    changed: list[Impression] = []
    for impression in impressions:
        shown = set(impression.item_ids)
        engaged = list(impression.engaged_item_ids)
        converted = list(impression.converted_item_ids)
        for event in events:
            if event.recommendation_id != impression.recommendation_id or event.item_id not in shown:
                continue
            if event.item_id not in engaged:
                engaged.append(event.item_id)
            if event.event_type == PURCHASE and event.item_id not in converted:
                converted.append(event.item_id)
        if len(engaged) != len(impression.engaged_item_ids) or len(converted) != len(impression.converted_item_ids):
            changed.append(replace(impression, engaged_item_ids=tuple(engaged), converted_item_ids=tuple(converted)))
    return changed


def recommendation_ids(events: Sequence[UserEvent]) -> list[str]:
    return unique([e.recommendation_id for e in events if e.recommendation_id])


# -- shown counts ------------------------------------------------------------------------------------------


def shown_from_payload(raw: object) -> dict[str, int]:
    """Shown counts in the order kept (least recently shown first)."""
    out: dict[str, int] = {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return out
        if isinstance(raw, list):
            for entry in raw:
                if isinstance(entry, list) and len(entry) == 2:
                    out[str(entry[0])] = int(entry[1])
    elif isinstance(raw, list):
        for entry in raw:
            if isinstance(entry, dict) and "item_id" in entry:
                out[str(entry["item_id"])] = int(entry.get("count", 0))
    return out


def shown_to_payload(shown: Mapping[str, int]) -> str:
    return json.dumps([[item_id, count] for item_id, count in shown.items()], separators=(",", ":"))


def bump_shown(shown: Mapping[str, int], items: Iterable[str]) -> dict[str, int]:
    """One more showing of each item; they become the most recent, and only the newest MAX_SHOWN are kept."""
    out = dict(shown)
    for item_id in items:
        count = out.pop(item_id, 0)
        out[item_id] = count + 1
    if len(out) > MAX_SHOWN:
        out = dict(list(out.items())[-MAX_SHOWN:])
    return out


def forget_shown(shown: Mapping[str, int], items: Iterable[str]) -> dict[str, int]:
    """The counts without the items the user just had an event on."""
    gone = set(items)
    return {k: v for k, v in shown.items() if k not in gone}
