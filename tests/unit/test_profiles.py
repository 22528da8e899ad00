"""Profile vector maths."""

from __future__ import annotations

import numpy as np
import pytest

from services.retriever.profiles import profile_vector
from services.retriever.store import UserEvent


def ev(weight: float = 1.0, t: float = 0.0) -> UserEvent:
    return UserEvent(item_id="x", event_type="view", timestamp=t, weight=weight)


def test_no_events_gives_none() -> None:
    assert profile_vector([], [], half_life_events=10) is None


def test_single_event_is_the_normalised_item() -> None:
    v = profile_vector([[3.0, 4.0]], [ev()], half_life_events=10)
    assert v == pytest.approx((0.6, 0.8))


def test_recent_events_weigh_more() -> None:
    vectors = [[1.0, 0.0], [0.0, 1.0]]  # oldest first
    v = profile_vector(vectors, [ev(), ev()], half_life_events=1.0)
    assert v is not None
    # the older event has age 1, so half the weight of the newest
    assert v == pytest.approx(tuple(np.array([0.5, 1.0]) / np.linalg.norm([0.5, 1.0])))


def test_event_weight_scales_and_vectors_are_normalised_first() -> None:
    vectors = [[10.0, 0.0], [0.0, 1.0]]
    v = profile_vector(vectors, [ev(weight=3.0), ev(weight=1.0)], half_life_events=1e9)
    assert v is not None
    assert v[0] / v[1] == pytest.approx(3.0)
    assert np.linalg.norm(v) == pytest.approx(1.0)


def test_no_direction_gives_none() -> None:
    assert profile_vector([[1.0, 0.0]], [ev(weight=0.0)], half_life_events=5) is None
    assert profile_vector([[1.0, 0.0], [1.0, 0.0]], [ev(1.0), ev(-1.0)], half_life_events=1e12) is None


def test_negative_weight_points_away() -> None:
    v = profile_vector([[1.0, 0.0], [0.0, 1.0]], [ev(-1.0), ev(1.0)], half_life_events=1e9)
    assert v is not None
    assert v[0] < 0 < v[1]


def test_mismatched_lengths_and_bad_half_life() -> None:
    with pytest.raises(ValueError, match="pair up"):
        profile_vector([[1.0]], [ev(), ev()], half_life_events=1)
    with pytest.raises(ValueError, match="half_life"):
        profile_vector([[1.0]], [ev()], half_life_events=0)
