"""The rules the gateway and the retriever share about events (services/common/events.py)."""

from __future__ import annotations

import pytest

from services.common.events import (
    EventIdDeriver,
    derived_event_id,
    event_time_problem,
    event_type_problem,
    event_weight_problem,
)

NOW = 1_800_000_000.0


def test_a_derived_event_id_names_the_content() -> None:
    first = derived_event_id("u", "sku-1", "click", 1_700_000_000.5, "rec-1")
    assert first == derived_event_id("u", "sku-1", "click", 1_700_000_000.5, "rec-1")  # a retry: the same id
    others = {
        derived_event_id("v", "sku-1", "click", 1_700_000_000.5, "rec-1"),
        derived_event_id("u", "sku-2", "click", 1_700_000_000.5, "rec-1"),
        derived_event_id("u", "sku-1", "view", 1_700_000_000.5, "rec-1"),
        derived_event_id("u", "sku-1", "click", 1_700_000_001.5, "rec-1"),
        derived_event_id("u", "sku-1", "click", 1_700_000_000.5, ""),
    }
    assert first not in others and len(others) == 5
    assert len(first) <= 128
    # Within one call, identical events are numbered: two purchases stay two, and a retry numbers them alike.
    derive, again = EventIdDeriver(), EventIdDeriver()
    ids = [derive("u", "sku-1", "purchase", 5.0, "") for _ in range(2)]
    assert ids[0] == derived_event_id("u", "sku-1", "purchase", 5.0, "") != ids[1]
    assert ids == [again("u", "sku-1", "purchase", 5.0, "") for _ in range(2)]


@pytest.mark.parametrize(
    ("timestamp", "problem"),
    [
        (NOW - 86_400, ""),
        (NOW + 240, ""),  # a clock a few minutes ahead
        (NOW + 12 * 3600, "time is 12.0 hours in the future; times up to 300 seconds ahead of the server's clock"),
        (NOW + 600, "time is 10 minutes in the future"),
        (-1e12, "not Unix seconds since 1970"),
        (float("nan"), "not Unix seconds since 1970"),
        (1e300, "in the future"),
    ],
)
def test_event_times(timestamp: float, problem: str) -> None:
    found = event_time_problem(timestamp, NOW)
    assert (problem in found) if problem else found == ""


def test_event_types_and_weights() -> None:
    assert event_type_problem("purchase") == ""
    assert "'bogus' is not one of view, click, add_to_cart, purchase" in event_type_problem("bogus")
    assert event_weight_problem(4.0) == ""
    assert "above 0" in event_weight_problem(-5.0)
    assert "above 0" in event_weight_problem(0.0)
    assert "finite" in event_weight_problem(float("inf"))
