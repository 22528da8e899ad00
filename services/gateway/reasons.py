"""Why an item is on a page, in words that are true. A reason names a piece of evidence (an item of the user's
history or session, the query, the item graph) only when that evidence is strong: an item's cosine in the top
share of the catalog's pairwise similarities, a query matched as well as the search's own first page, an
item-graph link above a set weight. Otherwise it says why the item is there: it matched the filter, it is popular
(in the filtered set), the history or the session as a whole ranked it. No gRPC, no I/O but the calibration's
one retriever call.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from services.common.errors import UnavailableError
from services.gateway.model import HistoryEvent, ItemFilter, RetrievalPort, StoredItem

log = structlog.get_logger(__name__)

FLOAT32_ROUNDING = 1e-6
PAST_TENSE = {"view": "viewed", "click": "clicked", "add_to_cart": "added to your cart", "purchase": "bought"}
BEFORE = {
    "view": "You viewed it before",
    "click": "You clicked it before",
    "add_to_cart": "You added it to your cart before",
    "purchase": "You bought it before",
}


@dataclass(frozen=True)
class Evidence:
    """Why an item is on the page: the signal behind it, and the words for it."""

    source: str  # a history or context item id, "query", "graph", "popularity", "filter", "pin", "boost" or ""
    reason: str


@dataclass(frozen=True)
class ReasonSettings:
    """How strong evidence must be before a reason names it."""

    # Two items count as similar when their cosine is in this top share of the catalog's pairwise cosines.
    similar_percentile: float = 95.0
    calibration_sample: int = 500  # items whose pairwise cosines calibrate a catalog
    calibration_max_age_s: float = 600.0  # a catalog grows: its calibration is measured again after this
    graph_min_score: float = 1.0  # the item-graph score above which "people with a history like yours" is said


def quote(text: str, limit: int = 60) -> str:
    return f"“{text if len(text) <= limit else text[: limit - 1].rstrip() + '…'}”"


def popularity_reason(events: float, filtered: bool) -> str:
    if events <= 0:
        return "New in the catalog"
    return (
        f"Popular in the filtered set: {int(events)} interactions"
        if filtered
        else f"Popular: {int(events)} interactions"
    )


def similar_reason(source_title: str, similarity: float, strong: float, filtered: bool) -> str:
    """The reason of a GetSimilarItems answer: "Similar to" only above the catalog's bar."""
    if similarity >= strong:
        return f"Similar to {quote(source_title)}"
    if filtered:
        return f"Matches your filter; the nearest to {quote(source_title)} it holds, though not closely similar"
    return f"Among the nearest to {quote(source_title)}, though not closely similar"


def strong_similarity(vectors: np.ndarray, percentile: float) -> float:
    """The cosine at `percentile` of the pairwise cosines among the rows of `vectors` (each pair once, no row with
    itself); +inf with fewer than two rows, so nothing counts as similar in a catalog too small to tell."""
    rows = np.asarray(vectors, dtype=np.float64)
    if len(rows) < 2:
        return math.inf
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows / np.where(norms > 0, norms, 1.0)
    upper = np.triu_indices(len(rows), k=1)
    # An observed cosine at or above the percentile ("higher": a catalog of few pairs sets a strict bar), less
    # float32 rounding, so the pair at the bar counts.
    return float(np.percentile((rows @ rows.T)[upper], percentile, method="higher")) - FLOAT32_ROUNDING


class SimilarityScale:
    """Per catalog, the cosine above which two items count as similar: `similar_percentile` of the pairwise
    cosines among up to `calibration_sample` of its items (the most popular, which in a catalog without events
    are any), measured on first use and again once older than `calibration_max_age_s`. One measurement runs at a
    time per catalog; while the retriever cannot answer, nothing counts as similar."""

    def __init__(self, retrieval: RetrievalPort, settings: ReasonSettings, max_catalogs: int) -> None:
        self._retrieval = retrieval
        self._settings = settings
        self._max_catalogs = max_catalogs
        self._measured: dict[str, tuple[float, float]] = {}  # catalog -> (threshold, monotonic time measured)
        self._running: dict[str, asyncio.Task[float]] = {}

    async def threshold(self, catalog: str) -> float:
        measured = self._measured.get(catalog)
        if measured is not None and time.monotonic() - measured[1] < self._settings.calibration_max_age_s:
            return measured[0]
        task = self._running.get(catalog)
        if task is None:
            task = self._running[catalog] = asyncio.ensure_future(self._measure(catalog))
            task.add_done_callback(lambda _: self._running.pop(catalog, None))
        try:
            return await asyncio.shield(task)
        except UnavailableError as error:
            log.warning("could not calibrate reasons; naming no similar item", catalog=catalog, error=str(error))
            return math.inf

    async def _measure(self, catalog: str) -> float:
        sample = await self._retrieval.popular(catalog, self._settings.calibration_sample, 0, ItemFilter(), [])
        # By id: the retriever's popular list leaves the vectors out.
        stored = await self._retrieval.get_items(catalog, [item.item_id for item in sample], skip_missing=True)
        vectors = [item.vector for item in stored if item.vector is not None]
        threshold = strong_similarity(
            np.stack(vectors) if vectors else np.zeros((0, 0)), self._settings.similar_percentile
        )
        if len(self._measured) >= self._max_catalogs and catalog not in self._measured:
            self._measured.pop(next(iter(self._measured)))
        self._measured[catalog] = (threshold, time.monotonic())
        return threshold


@dataclass(frozen=True)
class Signals:
    """What one Recommend call knows to explain its items."""

    history: Sequence[StoredItem]  # the user's history and the session's items, with vectors
    events_by_item: Mapping[str, HistoryEvent]
    context_ids: frozenset[str]
    strong: float  # the catalog's similarity bar
    filtered: bool
    query: str = ""  # the query as the preprocessor cleaned it
    query_vector: np.ndarray | None = None
    query_bar: float = math.inf  # the query cosine of the search's own k-th result under the same filter
    graph_scores: Mapping[str, float] | None = None
    graph_min_score: float = math.inf


def explain(candidate: StoredItem, signals: Signals) -> Evidence:
    """The strongest true reason for a ranked candidate: the query it matches, then the most similar history or
    session item, then a strong item-graph link; otherwise why it is there (the filter, the history or the
    session as a whole)."""
    similar = _most_similar(candidate, signals)
    query = signals.query_vector
    if query is not None and candidate.vector is not None and float(candidate.vector @ query) >= signals.query_bar:
        reason = f"Matches your search {quote(signals.query)}"
        if similar is not None:
            reason += f"; {similar.reason[0].lower()}{similar.reason[1:]}"
        return Evidence("query", reason)
    if similar is not None:
        return similar
    graph_score = (signals.graph_scores or {}).get(candidate.item_id)
    if graph_score is not None and graph_score >= signals.graph_min_score:
        if any(item.item_id not in signals.context_ids for item in signals.history):
            return Evidence("graph", "Often chosen by people with a history like yours")
        return Evidence("graph", "Often chosen with the items in this session")
    event = signals.events_by_item.get(candidate.item_id)
    if event is not None:  # a seen item the caller asked to keep: never "similar to" itself
        return Evidence(candidate.item_id, BEFORE.get(event.event_type, BEFORE["view"]))
    return Evidence("filter" if signals.filtered else "", _why_ranked(signals))


def _most_similar(candidate: StoredItem, signals: Signals) -> Evidence | None:
    """The history or session item most similar to the candidate, when the similarity is strong; never the
    candidate itself."""
    if candidate.vector is None:
        return None
    best: tuple[float, StoredItem] | None = None
    for item in signals.history:
        if item.vector is None or item.item_id == candidate.item_id:
            continue
        similarity = float(candidate.vector @ item.vector)
        if similarity >= signals.strong and (best is None or similarity > best[0]):
            best = (similarity, item)
    if best is None:
        return None
    item = best[1]
    if item.item_id in signals.context_ids:
        return Evidence(item.item_id, f"Goes with {quote(item.title)} in this session")
    event = signals.events_by_item.get(item.item_id)
    verb = PAST_TENSE.get(event.event_type, "viewed") if event else "viewed"
    return Evidence(item.item_id, f"Similar to {quote(item.title)}, which you {verb}")


def _why_ranked(signals: Signals) -> str:
    """No single piece of evidence is strong: what brought the item."""
    parts = []
    if signals.query_vector is not None:
        parts.append(f"Near your search {quote(signals.query)}")
    if signals.filtered:
        parts.append("matches your filter")
    personal = any(item.item_id not in signals.context_ids for item in signals.history)
    if personal:
        parts.append("ranked for your history as a whole")
    elif signals.history:
        parts.append("ranked for this session as a whole")
    if not parts:
        return "Recommended for you"
    text = "; ".join(parts)
    return text[0].upper() + text[1:]
