"""What the gateway and the retriever agree on about an event: its id, its types, and which times and weights
are accepted. Both check events by these rules, so a caller meets the same answer at either door."""

from __future__ import annotations

import hashlib
import json
import math

# The event types the suite knows (the gateway's EventType values), as stored.
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
MAX_EVENT_ID_CHARS = 128
# Clocks differ between a caller and the suite; an event this far ahead of the receiving server's clock is
# still taken as "now-ish". Further ahead it is a wrong clock or a wrong unit (milliseconds), refused.
MAX_CLOCK_SKEW_S = 300.0
MAX_EVENT_WEIGHT = 1000.0


def derived_event_id(
    user_id: str, item_id: str, event_type: str, timestamp: float, recommendation_id: str, occurrence: int = 0
) -> str:
    """The id of an event sent without one, from its content: the same event sent again in another call (a
    retry) gets the same id and counts once. `occurrence` numbers identical events within one call (0 for the
    first), so two purchases of one item in one call stay two, and a retry of that call numbers them alike."""
    content = json.dumps([user_id, item_id, event_type, repr(float(timestamp)), recommendation_id])
    base = "derived:" + hashlib.sha256(content.encode()).hexdigest()[:40]
    return f"{base}-{occurrence}" if occurrence else base


class EventIdDeriver:
    """Derives the ids of one call's events, numbering identical ones (see derived_event_id)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def __call__(self, user_id: str, item_id: str, event_type: str, timestamp: float, recommendation_id: str) -> str:
        base = derived_event_id(user_id, item_id, event_type, timestamp, recommendation_id)
        occurrence = self._seen.get(base, 0)
        self._seen[base] = occurrence + 1
        return derived_event_id(user_id, item_id, event_type, timestamp, recommendation_id, occurrence)


def event_time_problem(timestamp: float, now: float) -> str:
    """Why a time is refused ("" when it is accepted): Unix seconds from 1970 up to the skew past `now`."""
    if not math.isfinite(timestamp) or timestamp < 0:
        return f"time {timestamp!r} is not Unix seconds since 1970"
    ahead = timestamp - now
    if ahead > MAX_CLOCK_SKEW_S:
        return (
            f"time is {_duration(ahead)} in the future; times up to {MAX_CLOCK_SKEW_S:.0f} seconds ahead of the "
            f"server's clock are accepted (clock skew): send when the event happened, in seconds"
        )
    return ""


def event_weight_problem(weight: float) -> str:
    """Why a profile weight is refused ("" when accepted): above 0 (a negative weight would turn the profile
    away from what the user did) and at most MAX_EVENT_WEIGHT."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        return f"weight must be a finite number, got {weight!r}"
    if not 0 < weight <= MAX_EVENT_WEIGHT:
        return f"weight is {weight}; it must be above 0 and at most {MAX_EVENT_WEIGHT:g}"
    return ""


def event_type_problem(event_type: str) -> str:
    if event_type not in EVENT_TYPES:
        return f"event_type {event_type!r} is not one of {', '.join(EVENT_TYPES)}"
    return ""


def _duration(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 120:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"
