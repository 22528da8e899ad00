"""What happens to scored candidates before they are shown: boosts, rotation of over-shown items, diversity
(maximal marginal relevance) with a per-category cap, and pinned positions. Pure numpy, no I/O.

Precedence, as the public API documents it: filters, blocked items and exclusions have already removed
candidates; boosts and rotation change scores; diversity and the category cap pick the page from the
scores; pins take their positions last.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgumentError
from services.gateway.model import ItemFilter, StoredItem

MAX_BOOSTS = 32
MAX_BOOST_WEIGHT = 10.0
MAX_BLOCKED = 1000
# Diversity picks among this many of the best candidates per page slot, so a high weight still draws on
# relevant items rather than the far end of the pool.
DIVERSITY_WINDOW_PER_SLOT = 5
MIN_DIVERSITY_WINDOW = 50


@dataclass(frozen=True)
class Boost:
    """Adds `weight` (in standard deviations of the scores) to items in `category`, or whose attribute
    `field` equals `value` (compared as text)."""

    weight: float
    category: str = ""
    field: str = ""
    value: str = ""

    def matches(self, item: StoredItem) -> bool:
        if self.category:
            return self.category in item.categories
        return self.value in _texts(item.payload.get(self.field))

    def describe(self) -> str:
        return f"category “{self.category}”" if self.category else f"{self.field} “{self.value}”"


@dataclass(frozen=True)
class Pin:
    item_id: str
    position: int  # 1-based


@dataclass(frozen=True)
class Rules:
    boosts: tuple[Boost, ...] = ()
    pins: tuple[Pin, ...] = ()
    blocked: tuple[str, ...] = ()
    diversity: float = 0.0
    max_per_category: int = 0

    def check(self, k: int) -> None:
        """INVALID_ARGUMENT for rules that contradict each other or exceed the limits."""
        if not (math.isfinite(self.diversity) and 0.0 <= self.diversity <= 1.0):
            raise InvalidArgumentError(f"diversity is {self.diversity}; give a number from 0 to 1")
        if self.max_per_category < 0:
            raise InvalidArgumentError("max_per_category is negative; give 0 (no cap) or more")
        if len(self.boosts) > MAX_BOOSTS:
            raise InvalidArgumentError(f"{len(self.boosts)} boosts; the limit is {MAX_BOOSTS}")
        for index, boost in enumerate(self.boosts):
            if bool(boost.category) == bool(boost.field):
                raise InvalidArgumentError(f"boosts[{index}] needs either a category, or a field and a value")
            if boost.field and not boost.value:
                raise InvalidArgumentError(f"boosts[{index}] names field {boost.field!r} but no value to match")
            if not (math.isfinite(boost.weight) and abs(boost.weight) <= MAX_BOOST_WEIGHT):
                raise InvalidArgumentError(
                    f"boosts[{index}].weight is {boost.weight}; give a number from -{MAX_BOOST_WEIGHT:g} to "
                    f"{MAX_BOOST_WEIGHT:g}"
                )
        if len(self.blocked) > MAX_BLOCKED:
            raise InvalidArgumentError(f"{len(self.blocked)} blocked items; the limit is {MAX_BLOCKED}")
        if len(self.pins) > k:
            raise InvalidArgumentError(f"{len(self.pins)} pins for a page of {k}: pin at most k items")
        positions = [pin.position for pin in self.pins]
        if any(not 1 <= p <= k for p in positions):
            raise InvalidArgumentError(f"pin positions {positions} must each be from 1 to k ({k})")
        if len(set(positions)) != len(positions):
            raise InvalidArgumentError(f"two pins share a position ({positions}): give each its own")
        pinned = [pin.item_id for pin in self.pins]
        if len(set(pinned)) != len(pinned):
            raise InvalidArgumentError("an item is pinned twice: pin each item once")
        both = sorted(set(pinned) & set(self.blocked))
        if both:
            raise InvalidArgumentError(f"items {both} are both pinned and blocked: choose one")


@dataclass(frozen=True)
class Rotation:
    """Items shown to a user at least `after` times without a response lose `penalty` standard deviations
    per further showing; `after` 0 turns rotation off."""

    after: int = 3
    penalty: float = 0.5


def _texts(value: object) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, str):
        return [value]
    if isinstance(value, int | float):
        return [f"{value:g}", str(value)]
    if isinstance(value, list | tuple):
        return [text for v in value for text in _texts(v)]
    return []


def zscores(values: np.ndarray) -> np.ndarray:
    if not len(values):
        return values
    std = float(values.std())
    return (values - values.mean()) / std if std > 1e-9 else np.zeros_like(values)


def boost_scores(items: Sequence[StoredItem], boosts: Sequence[Boost]) -> np.ndarray:
    """Each item's total boost."""
    total = np.zeros(len(items), dtype=np.float64)
    for boost in boosts:
        total += np.asarray([boost.weight if boost.matches(item) else 0.0 for item in items])
    return total


def rotation_penalties(items: Sequence[StoredItem], shown_counts: Mapping[str, int], rotation: Rotation) -> np.ndarray:
    if rotation.after <= 0 or not shown_counts:
        return np.zeros(len(items), dtype=np.float64)
    shown = np.asarray([shown_counts.get(item.item_id, 0) for item in items], dtype=np.float64)
    return rotation.penalty * np.maximum(0.0, shown - rotation.after + 1)


def leaf_category(item: StoredItem) -> str:
    """The most specific category (categories are stored broadest first); "" when there is none."""
    categories = item.categories
    return categories[-1] if categories else ""


@dataclass(frozen=True)
class Selection:
    """Indexes into the candidates, in page order, each with its redundancy (highest cosine to an item
    placed above it); `has_more` when candidates are left for a later page."""

    order: tuple[int, ...]
    redundancy: tuple[float, ...]
    has_more: bool


def select_page(
    items: Sequence[StoredItem], scores: np.ndarray, k: int, diversity: float, max_per_category: int
) -> Selection:
    """The best `k` by score; with a diversity weight, maximal marginal relevance: each slot takes the
    candidate with the highest (1 - diversity) * relevance - diversity * redundancy, relevance being the
    score scaled to [0, 1] over the window. The category cap skips items whose category is full."""
    ranked = [int(i) for i in np.argsort(-scores, kind="stable")]
    if diversity <= 0 and max_per_category <= 0:
        page = ranked[:k]
        return Selection(tuple(page), tuple(0.0 for _ in page), len(ranked) > k)
    window = ranked[: max(k * DIVERSITY_WINDOW_PER_SLOT, MIN_DIVERSITY_WINDOW)]
    vectors = _unit_rows(items, window)
    window_scores = scores[window]
    spread = float(window_scores.max() - window_scores.min()) if len(window) else 0.0
    relevance = (window_scores - window_scores.min()) / spread if spread > 1e-12 else np.ones(len(window))
    redundancy = np.zeros(len(window), dtype=np.float64)
    available = np.ones(len(window), dtype=bool)
    per_category: dict[str, int] = {}
    order: list[int] = []
    placed_redundancy: list[float] = []

    def category_full(index: int) -> bool:
        category = leaf_category(items[index])
        return max_per_category > 0 and bool(category) and per_category.get(category, 0) >= max_per_category

    while len(order) < k:
        for position in np.flatnonzero(available):
            if category_full(window[position]):
                available[position] = False
        if not available.any():
            break
        value = (1 - diversity) * relevance - diversity * redundancy
        value[~available] = -np.inf
        best = int(np.argmax(value))
        chosen = window[best]
        order.append(chosen)
        placed_redundancy.append(float(redundancy[best]))
        available[best] = False
        category = leaf_category(items[chosen])
        per_category[category] = per_category.get(category, 0) + 1
        if vectors is not None:
            redundancy = np.maximum(redundancy, vectors @ vectors[best])
    # Past the window (a tight cap can empty it), the rest in score order under the same cap.
    for index in ranked[len(window) :]:
        if len(order) >= k:
            break
        if not category_full(index):
            order.append(index)
            placed_redundancy.append(0.0)
            category = leaf_category(items[index])
            per_category[category] = per_category.get(category, 0) + 1
    # The cap holds per page: items it held back can fill later pages.
    return Selection(tuple(order), tuple(placed_redundancy), len(ranked) > len(order))


def _unit_rows(items: Sequence[StoredItem], indexes: Sequence[int]) -> np.ndarray | None:
    """The candidates' vectors as unit rows (zeros for items without one); None when none has a vector."""
    if not any(items[i].vector is not None for i in indexes):
        return None
    dimension = next(len(v) for i in indexes if (v := items[i].vector) is not None)
    rows = np.zeros((len(indexes), dimension), dtype=np.float64)
    for row, index in enumerate(indexes):
        vector = items[index].vector
        if vector is not None and len(vector) == dimension:
            norm = float(np.linalg.norm(vector))
            if norm > 0:
                rows[row] = vector / norm
    return rows


def place_pins(page: Sequence[str], pins: Sequence[Pin], k: int) -> list[tuple[str, bool]]:
    """The page with pinned ids at their positions (1-based) and the ranked ids filling the other slots, at
    most k long; each entry says whether it was pinned. Ranked ids equal to a pinned id are dropped."""
    pinned = {pin.position - 1: pin.item_id for pin in pins}
    pinned_ids = set(pinned.values())
    ranked = iter(item_id for item_id in page if item_id not in pinned_ids)
    placed: list[tuple[str, bool]] = []
    for slot in range(k):
        if slot in pinned:
            placed.append((pinned[slot], True))
            continue
        following = next(ranked, None)
        if following is None:
            # Fewer ranked items than slots: later pins move up rather than leave a hole.
            placed.extend((pinned[s], True) for s in sorted(pinned) if s > slot)
            break
        placed.append((following, False))
    return placed


def uses_categories(rules: Rules, item_filter: ItemFilter) -> bool:
    """Whether a request has a category rule that :func:`category_warnings` can warn about."""
    return bool(item_filter.categories_any) or rules.max_per_category > 0 or any(b.category for b in rules.boosts)


def category_warnings(
    rules: Rules, item_filter: ItemFilter, candidate_categories: Sequence[Sequence[str]]
) -> tuple[str, ...]:
    """The category rules of a request that could not act on these candidates, each with why. A catalog whose
    items were stored without categories would otherwise ignore a category filter, boost or cap in silence."""
    warnings: list[str] = []
    if item_filter.categories_any and not candidate_categories:
        warnings.append(
            "filter.categories_any left no item: category names match exactly, and a catalog whose items were "
            "stored without categories has none to match"
        )
    if candidate_categories and not any(candidate_categories):
        why = f"none of the {len(candidate_categories)} candidates has a category (items stored without categories)"
        if rules.max_per_category > 0:
            warnings.append(f"max_per_category had no effect: {why}")
        warnings += [
            f"boosts[{index}] had no effect: {why}" for index, boost in enumerate(rules.boosts) if boost.category
        ]
    return tuple(warnings)
