"""User profile vectors: a recency-weighted mean of the vectors of the items a user interacted with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from services.retriever.store import UserEvent


def profile_vector(
    item_vectors: Sequence[Sequence[float]],
    events: Sequence[UserEvent],
    half_life_events: float,
) -> tuple[float, ...] | None:
    """The L2-normalised weighted mean of `item_vectors` (`item_vectors[i]` belongs to `events[i]`, events
    oldest first). Event i weighs `events[i].weight * 0.5 ** (age / half_life_events)`, where the newest event
    has age 0 and the one before it age 1. Item vectors are normalised first, so only their direction counts.

    Returns None when there are no events or the weighted sum has no direction (for example all weights 0).
    """
    if len(item_vectors) != len(events):
        raise ValueError(f"got {len(item_vectors)} item vectors for {len(events)} events; they must pair up")
    if half_life_events <= 0:
        raise ValueError(f"half_life_events must be positive, got {half_life_events}")
    if not events:
        return None
    matrix = np.asarray(item_vectors, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError("item vectors must all have the same length")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    ages = np.arange(len(events) - 1, -1, -1, dtype=np.float64)
    weights = np.asarray([e.weight for e in events], dtype=np.float64) * np.power(0.5, ages / half_life_events)
    # The weighted sum has the direction of the weighted mean (when the weights sum to a positive number);
    # with negative weights it still points away from disliked items.
    total = weights @ matrix
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm <= 1e-12:
        return None
    return tuple(float(v) for v in total / norm)


def history_profile(
    history: Sequence[UserEvent], vectors: Mapping[str, tuple[float, ...] | None], half_life: float
) -> tuple[float, ...] | None:
    """The profile from the events whose items still exist (deleted items drop out)."""
    kept = [e for e in history if vectors.get(e.item_id) is not None]
    return profile_vector([vectors[e.item_id] or () for e in kept], kept, half_life)
