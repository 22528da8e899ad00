"""The gateway's domain: composes text cleaning, embedding, retrieval and ranking into the public API."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
import structlog

from services.common.catalogs import DEFAULT_CATALOG, check_catalog
from services.common.errors import InvalidArgumentError, NotFoundError, ServiceError, UnavailableError
from services.common.events import MAX_EVENT_ID_CHARS, EventIdDeriver, event_time_problem
from services.common.input_rules import check_id, has_words
from services.gateway.experiments import Arm, ArmSettings, Experiments
from services.gateway.fallbacks import PopularCache, matches, raw_query
from services.gateway.impressions import ImpressionWriter
from services.gateway.model import (
    MAX_RECOMMENDATION_ID_CHARS,
    SERVING_ENCODER,
    BackendUnavailableError,
    CatalogRecord,
    EmbeddingPort,
    EncoderChangedError,
    EncoderSource,
    EventRecord,
    HistoryEvent,
    Impression,
    ItemFilter,
    ItemText,
    NewItem,
    Profile,
    RankingPort,
    Recommendation,
    RecommendResult,
    RecordedEvents,
    RetrievalPort,
    SearchResult,
    StoredItem,
    TextPort,
)
from services.gateway.reasons import (
    Evidence,
    ReasonSettings,
    Signals,
    SimilarityScale,
    explain,
    popularity_reason,
    quote,
    similar_reason,
)
from services.gateway.rules import (
    DIVERSITY_WINDOW_PER_SLOT,
    MIN_DIVERSITY_WINDOW,
    Boost,
    Rotation,
    Rules,
    boost_scores,
    category_warnings,
    place_pins,
    rotation_penalties,
    select_page,
    uses_categories,
    zscores,
)

log = structlog.get_logger(__name__)

# A next page's earlier pages, when one is not recorded yet: read again after these waits (another gateway's writer
# takes milliseconds after its answer).
SHOWN_PAGE_WAITS_S = (0.0, 0.02, 0.05, 0.1)

# Payload keys the gateway or the retriever owns (the retriever keeps an item's embedded text and whether its
# staged copy is behind); catalog attributes may not overwrite them.
RESERVED_KEYS = frozenset({"item_id", "title", "categories", "popularity", "description", "item_text", "staged_behind"})


@dataclass(frozen=True)
class RecommenderLimits:
    max_k: int = 100
    max_offset: int = 1000
    candidate_pool: int = 100
    graph_candidates: int = 0  # items the ranker's item graph adds to the pool
    max_filter_conditions: int = 64
    max_query_chars: int = 2048
    max_text_chars: int = 100_000
    max_items_per_upsert: int = 512
    max_events_per_call: int = 1000
    max_id_chars: int = 256
    history_for_ranking: int = 50
    max_parallel_writes: int = 8
    popular_cache_size: int = 200
    max_context_items: int = 50
    max_popular_pool: int = 1000
    max_cached_catalogs: int = 64
    retriever_batch: int = 512  # most ids the retriever takes in one call (RETRIEVER_MAX_BATCH)
    impression_queue: int = 10_000  # pages answered and waiting to be recorded


@dataclass(frozen=True)
class Blend:
    """How signals combine, each put on one scale (z-scores over the candidate pool). The user's side: the
    ranker's scores mixed with the cosine to the profile (and session) vector, `ranker_weight` to the ranker.
    With a query the candidates are the query's nearest items, and their score is `query_weight` of the cosine
    to the query plus the rest of the user's side: the query decides what matches, the user orders it."""

    ranker_weight: float = 0.5
    query_weight: float = 0.5


T = TypeVar("T")


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _pick(override: T | None, default: T) -> T:
    return default if override is None else override


def _personal_target(profile: np.ndarray | None, context: np.ndarray | None) -> np.ndarray | None:
    """The user's side as one vector: the profile and the session's items count equally; None without either."""
    known = [v for v in (profile, context) if v is not None]
    return _unit(np.sum(known, axis=0)) if known else None


def _strategy(profile: np.ndarray | None, context: np.ndarray | None, query: np.ndarray | None) -> str:
    named = (("personalised", profile), ("session", context), ("query", query))
    return "+".join(name for name, vector in named if vector is not None)


def _cosines(items: Sequence[StoredItem], vector: np.ndarray) -> np.ndarray:
    """Each item's cosine to a unit vector (0 for an item without a vector)."""
    return np.asarray([float(i.vector @ vector) if i.vector is not None else 0.0 for i in items], dtype=np.float64)


def _kth_best(values: np.ndarray, k: int) -> float:
    """The k-th highest value (the lowest when there are fewer); +inf when empty."""
    if not len(values):
        return math.inf
    return float(np.sort(values)[::-1][min(k, len(values)) - 1])


def _with_boost(evidence: Evidence, item: StoredItem, boosts: Sequence[Boost]) -> Evidence:
    lifted = [boost for boost in boosts if boost.weight > 0 and boost.matches(item)]
    if not lifted:
        return evidence
    strongest = max(lifted, key=lambda boost: boost.weight)
    clause = f"boosted for {strongest.describe()}"
    # Without strong evidence the boost is the named reason, after the words for why the item is there.
    return Evidence(evidence.source or "boost", f"{evidence.reason}; {clause}")


class StageClock:
    """Wall time per stage of one call, in milliseconds (stages that overlap each count their own time)."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self.ms: dict[str, float] = {}

    async def time(self, stage: str, work: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await work
        finally:
            self._add(stage, started)

    @contextlib.contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._add(stage, started)

    def _add(self, stage: str, started: float) -> None:
        self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - started) * 1000

    def total(self) -> dict[str, float]:
        return {**self.ms, "total": (time.perf_counter() - self._started) * 1000}


@dataclass(frozen=True)
class _Labels:
    """What identifies one response: the recommendation, its page and the experiment arm."""

    recommendation_id: str
    page: int
    experiment: str
    arm: str

    def result(
        self,
        items: tuple[Recommendation, ...],
        has_more: bool,
        strategy: str,
        model_version: str,
        degraded: tuple[str, ...],
    ) -> RecommendResult:
        return RecommendResult(
            items,
            has_more,
            strategy,
            model_version,
            degraded,
            self.recommendation_id,
            self.page,
            self.experiment,
            self.arm,
        )


@dataclass(frozen=True)
class PageRef:
    """Where a later page continues: the recommendation's id and the page number asked for (2 or more)."""

    recommendation_id: str
    page: int


@dataclass(frozen=True)
class RecommendQuery:
    """One Recommend call in domain terms."""

    user_id: str = ""
    query: str = ""
    k: int = 10
    item_filter: ItemFilter = field(default_factory=ItemFilter)
    exclude_seen: bool = True
    catalog: str = DEFAULT_CATALOG
    context_item_ids: tuple[str, ...] = ()
    rules: Rules = field(default_factory=Rules)
    explain: bool = False
    page: PageRef | None = None


@dataclass(frozen=True)
class Tuning:
    """The settings one call runs with: the gateway's own, or an experiment arm's overrides of them."""

    ranker_weight: float
    query_weight: float
    candidate_pool: int
    diversity: float
    max_per_category: int
    rotation: Rotation
    model_version: str = ""


class Recommender:
    def __init__(
        self,
        text: TextPort,
        embedding: EmbeddingPort,
        retrieval: RetrievalPort,
        ranking: RankingPort,
        limits: RecommenderLimits,
        blend: Blend,
        event_weights: Mapping[str, float],
        experiments: Experiments | None = None,
        rotation: Rotation | None = None,
        reasons: ReasonSettings | None = None,
        encoders: EncoderSource | None = None,
    ) -> None:
        self.text = text
        self.encoders = encoders
        self.embedding = embedding
        self.retrieval = retrieval
        self.ranking = ranking
        self.limits = limits
        self.blend = blend
        self.event_weights = event_weights
        self.experiments = experiments or Experiments()
        self.rotation = rotation or Rotation()
        self.popular_caches: dict[str, PopularCache] = {}
        self.reasons = reasons or ReasonSettings()
        self.similarity_scale = SimilarityScale(retrieval, self.reasons, limits.max_cached_catalogs)
        self.impressions = ImpressionWriter(retrieval, limits.impression_queue, limits.retriever_batch)

    async def _on_serving_encoder(self, catalog: str, work: Callable[[], Awaitable[T]]) -> T:
        """Runs ``work`` with the catalog's serving encoder in SERVING_ENCODER, so every vector it embeds,
        searches and scores is that encoder's; once more with the new one when the catalog switched meanwhile."""
        if self.encoders is None:
            return await work()

        async def on(serving: str | None) -> T:
            token = SERVING_ENCODER.set(serving)
            try:
                return await work()
            finally:
                SERVING_ENCODER.reset(token)

        try:
            return await on(await self.encoders.current(catalog))
        except EncoderChangedError as changed:
            self.encoders.changed(catalog, changed.serving)
            log.info("catalog switched encoders during a call; running it again", serving=changed.serving)
            return await on(changed.serving)

    # ---- validation ----------------------------------------------------------------------------------

    def _k(self, k: int) -> int:
        if not 1 <= k <= self.limits.max_k:
            raise InvalidArgumentError(f"k is {k}; ask for 1 to {self.limits.max_k} items")
        return k

    def _check_id(self, value: str, what: str) -> None:
        check_id(value, what, self.limits.max_id_chars)

    def _check_filter(self, item_filter: ItemFilter) -> None:
        if item_filter.size() > self.limits.max_filter_conditions:
            raise InvalidArgumentError(
                f"the filter has {item_filter.size()} conditions; the limit is {self.limits.max_filter_conditions}"
            )

    def _check_query(self, query: str) -> None:
        if len(query) > self.limits.max_query_chars:
            raise InvalidArgumentError(
                f"the query has {len(query)} characters; the limit is {self.limits.max_query_chars}: shorten it"
            )

    @staticmethod
    def _check_cleaned_query(cleaned: str) -> None:
        # Markup, emoji or symbols alone embed to a vector that means nothing: it would answer arbitrary items.
        if not has_words(cleaned):
            raise InvalidArgumentError(
                "query has no letters or digits after cleaning (only markup, emoji or symbols): send words, or no "
                "query at all to Recommend"
            )

    @staticmethod
    def _check_item_texts(texts: Sequence[ItemText]) -> None:
        # An item's text starts with its title, so an empty text means the title (the one required field) was
        # empty after cleaning: name the caller's field, not the embedding service's. A title of symbols alone
        # ("!!!" is a band) is still a title.
        for index, text in enumerate(texts):
            if not text.text.strip():
                raise InvalidArgumentError(
                    f"items[{index}].title has no text after cleaning (only markup or invisible characters): give "
                    "the item a title"
                )

    def _check_recommend(self, request: RecommendQuery) -> None:
        check_catalog(request.catalog)
        if request.user_id:
            self._check_id(request.user_id, "user_id")
        self._check_query(request.query)
        self._check_filter(request.item_filter)
        self._k(request.k)
        if len(request.context_item_ids) > self.limits.max_context_items:
            raise InvalidArgumentError(
                f"{len(request.context_item_ids)} context items; the limit is {self.limits.max_context_items}: "
                "send the most recent"
            )
        for index, item_id in enumerate(request.context_item_ids):
            self._check_id(item_id, f"context_item_ids[{index}]")
        for index, item_id in enumerate(request.rules.blocked):
            self._check_id(item_id, f"blocked_item_ids[{index}]")
        for index, pin in enumerate(request.rules.pins):
            self._check_id(pin.item_id, f"pins[{index}].item_id")
        request.rules.check(request.k)

    def _tuning(self, arm: Arm | None) -> Tuning:
        overrides = arm.settings if arm is not None else ArmSettings()
        rotation = self.rotation
        if overrides.rotation_after is not None:
            rotation = Rotation(overrides.rotation_after, rotation.penalty)
        return Tuning(
            ranker_weight=_pick(overrides.ranker_weight, self.blend.ranker_weight),
            query_weight=_pick(overrides.query_weight, self.blend.query_weight),
            candidate_pool=_pick(overrides.candidate_pool, self.limits.candidate_pool),
            diversity=_pick(overrides.diversity, 0.0),
            max_per_category=_pick(overrides.max_per_category, 0),
            rotation=rotation,
            model_version=arm.model_version if arm is not None else "",
        )

    def popular_cache(self, catalog: str) -> PopularCache:
        """The catalog's cache of popular items (for retriever outages), made on first use."""
        cache = self.popular_caches.get(catalog)
        if cache is None:
            if len(self.popular_caches) >= self.limits.max_cached_catalogs:
                self.popular_caches.pop(next(iter(self.popular_caches)))
            cache = self.popular_caches[catalog] = PopularCache(self.retrieval, catalog, self.limits.popular_cache_size)
        return cache

    async def _query_vector(self, query: str, degraded: list[str], optional: bool) -> tuple[str, np.ndarray]:
        """The query as cleaned (what reasons quote, never the raw text) and its vector; INVALID_ARGUMENT when
        nothing searchable is left. A preprocessor outage falls back to the raw text without control characters; an
        embedding outage raises UnavailableError. An optional query (one with a fallback) is embedded on a short
        deadline; a required one may use the caller's whole remaining time."""
        try:
            cleaned = await self.text.clean_query(query)
        except UnavailableError as error:
            log.warning("preprocessor unavailable; embedding the raw query", error=str(error))
            degraded.append("preprocessor")
            cleaned = raw_query(query)
        self._check_cleaned_query(cleaned)
        if optional:
            return cleaned, await self.embedding.embed_query(cleaned)
        vectors = await self.embedding.embed([cleaned])
        first: np.ndarray = vectors[0]
        return cleaned, first

    async def _optional_query_vector(self, query: str, degraded: list[str]) -> tuple[str, np.ndarray] | None:
        if not query.strip():
            return None
        try:
            return await self._query_vector(query, degraded, optional=True)
        except UnavailableError as error:
            log.warning("embedding unavailable; recommending without the query", error=str(error))
            degraded.append("embedding")
            return None

    # ---- Recommend -----------------------------------------------------------------------------------

    async def recommend(self, request: RecommendQuery) -> RecommendResult:
        self._check_recommend(request)
        if request.page is not None:
            recommendation_id, page = request.page.recommendation_id, request.page.page
        else:
            recommendation_id, page = uuid.uuid4().hex, 1
        experiment = self.experiments.for_catalog(request.catalog)
        # Anonymous callers are split by the recommendation, so all its pages stay in one arm.
        arm = experiment.assign(request.user_id or recommendation_id) if experiment is not None else None
        labels = _Labels(recommendation_id, page, experiment.name if experiment else "", arm.name if arm else "")
        degraded: list[str] = []
        clock = StageClock()
        try:
            result = await self._on_serving_encoder(
                request.catalog, lambda: self._recommend(request, labels, self._tuning(arm), degraded, clock)
            )
        except BackendUnavailableError as error:
            if error.stage != "retriever":
                raise
            result = self._from_cache(request, labels, degraded)
        return replace(result, stage_ms=clock.total())

    def _from_cache(self, request: RecommendQuery, labels: _Labels, degraded: list[str]) -> RecommendResult:
        """Popular items from the cache while the retriever is down; UNAVAILABLE at once when it is empty.
        Pages of a cached answer count by position, as nothing can be recorded meanwhile."""
        k = request.k
        offset = (labels.page - 1) * k
        cached = self.popular_cache(request.catalog).page(k + 1, offset, request.item_filter)
        if cached is None:
            raise UnavailableError("the retriever is down and no popular items are cached yet; retry shortly")
        log.warning("retriever unavailable; serving cached popular items")
        blocked = set(request.rules.blocked)
        filtered = request.item_filter.size() > 0
        items = tuple(self._popular_item(item, filtered) for item in cached[:k] if item.item_id not in blocked)
        return labels.result(items, len(cached) > k, "popular", "", _stages([*degraded, "retriever"]))

    @staticmethod
    def _popular_item(item: StoredItem, filtered: bool) -> Recommendation:
        reason = popularity_reason(item.score, filtered)
        return Recommendation(item.item_id, item.score, reason, item.title, item.categories, evidence="popularity")

    async def _similarity_bar(self, request: RecommendQuery) -> float:
        """The catalog's bar for naming a history or session item as similar; +inf when there are none."""
        if not (request.user_id or request.context_item_ids):
            return math.inf
        return await self.similarity_scale.threshold(request.catalog)

    async def _recommend(
        self, request: RecommendQuery, labels: _Labels, tuning: Tuning, degraded: list[str], clock: StageClock
    ) -> RecommendResult:
        catalog, k, rules = request.catalog, request.k, request.rules
        shown_before: set[str] = set()
        if labels.page > 1:
            impressions = await clock.time("shown", self._shown_pages(catalog, labels.recommendation_id, labels.page))
            if not impressions:
                raise NotFoundError(
                    f"recommendation {labels.recommendation_id} is unknown in this catalog: ask for the first "
                    "page again (without page_token)"
                )
            shown_before = {item_id for impression in impressions for item_id in impression.item_ids}
            if len(shown_before) >= self.limits.max_offset:
                return labels.result((), False, "popular", "", _stages(degraded))

        profile, context, queried, strong = await asyncio.gather(
            clock.time("profile", self.retrieval.get_profile(catalog, request.user_id)) if request.user_id else _none(),
            clock.time("context", self.retrieval.get_items(catalog, request.context_item_ids, skip_missing=False))
            if request.context_item_ids
            else _empty(),
            clock.time("query", self._optional_query_vector(request.query, degraded)),
            clock.time("calibration", self._similarity_bar(request)),
        )
        query_text, query_vector = queried if queried is not None else ("", None)
        events = profile.events if profile else ()
        seen = list(dict.fromkeys(e.item_id for e in events))
        pinned_ids = [pin.item_id for pin in rules.pins] if labels.page == 1 else []
        exclude = list(
            dict.fromkeys(
                [
                    *(seen if request.exclude_seen else []),
                    *request.context_item_ids,
                    *rules.blocked,
                    *shown_before,
                    *pinned_ids,
                ]
            )
        )
        context_vectors = [item.vector for item in context if item.vector is not None]
        context_vector = _unit(np.mean(context_vectors, axis=0)) if context_vectors else None
        profile_vector = profile.vector if profile is not None else None
        personal = _personal_target(profile_vector, context_vector)
        strategy = _strategy(profile_vector, context_vector, query_vector)
        # A query decides what matches, so its nearest items are the candidates; the user's side orders them.
        target = query_vector if query_vector is not None else personal

        diversity = rules.diversity or tuning.diversity
        max_per_category = rules.max_per_category or tuning.max_per_category
        context_ids = set(request.context_item_ids)
        history_ids = [i for i in seen if i not in context_ids][-self.limits.history_for_ranking :]
        pinned_task = self.retrieval.get_items(catalog, pinned_ids, skip_missing=False) if pinned_ids else _empty()
        stages: dict[str, np.ndarray] = {}
        model_version = ""
        graph_scores: dict[str, float] = {}
        query_bar = math.inf
        if target is None:
            limit = min(max(k * DIVERSITY_WINDOW_PER_SLOT, MIN_DIVERSITY_WINDOW), self.limits.max_popular_pool)
            candidates, pinned = await asyncio.gather(
                clock.time(
                    "retrieval",
                    self.retrieval.popular(catalog, limit, 0, request.item_filter, exclude, with_vectors=diversity > 0),
                ),
                pinned_task,
            )
            history: list[StoredItem] = []
            popularity = np.asarray([c.score for c in candidates], dtype=np.float64)
            stages["popularity"] = popularity
            base = zscores(np.log1p(np.maximum(popularity, 0.0)))
        else:
            pool = max(tuning.candidate_pool, k + 1)
            # The item graph proposes what the history leads to whatever its text; beside a query its items
            # would not match what was asked (the ranker's score still holds the graph's term).
            suggested = (
                await clock.time(
                    "suggest", self._suggest(request, tuning, [*history_ids, *request.context_item_ids], degraded)
                )
                if query_vector is None
                else []
            )
            graph_scores = dict(suggested)
            found, pinned = await asyncio.gather(
                clock.time(
                    "retrieval",
                    self.retrieval.candidates(
                        catalog, target, pool, request.item_filter, exclude, list(graph_scores), history_ids
                    ),
                ),
                pinned_task,
            )
            candidates = found.pool
            history = [*found.history, *context]  # the session's items are the most recent
            similarity = np.asarray([c.score for c in candidates], dtype=np.float64)
            stages["retrieval"] = similarity
            if query_vector is None:
                base, ranker_scores, model_version = await clock.time(
                    "ranker", self._rank(request, tuning, history, candidates, similarity, degraded)
                )
            elif personal is None:
                base, ranker_scores = zscores(similarity), None
            else:
                closeness = _cosines(candidates, personal)
                stages["profile"] = closeness
                liked, ranker_scores, model_version = await clock.time(
                    "ranker", self._rank(request, tuning, history, candidates, closeness, degraded)
                )
                base = tuning.query_weight * zscores(similarity) + (1 - tuning.query_weight) * liked
            if query_vector is not None:
                stages["query"] = similarity
                query_bar = _kth_best(similarity, k)  # what the search's own page of k would have matched
            if ranker_scores is not None:
                stages["ranker"] = ranker_scores
        pinned = [item for item in pinned if matches(item, request.item_filter)]

        with clock.measure("rules"):
            boosts = boost_scores(candidates, rules.boosts)
            rotation = rotation_penalties(candidates, profile.shown_counts if profile else {}, tuning.rotation)
            final = base + boosts - rotation
            stages.update(base=base, boost=boosts, rotation=rotation, final=final)
            selection = select_page(candidates, final, k, diversity, max_per_category)
            redundancy = dict(zip(selection.order, selection.redundancy, strict=True))
            by_id = {candidates[i].item_id: i for i in selection.order}
            pinned_by_id = {item.item_id: item for item in pinned}
            pins = [pin for pin in rules.pins if pin.item_id in pinned_by_id] if labels.page == 1 else []
            placed = place_pins([candidates[i].item_id for i in selection.order], pins, k)

        signals = Signals(
            history,
            {e.item_id: e for e in events},
            frozenset(context_ids),
            strong,
            request.item_filter.size() > 0,
            query_text,
            query_vector,
            query_bar,
            graph_scores,
            self.reasons.graph_min_score,
        )
        items: list[Recommendation] = []
        for position, (item_id, is_pin) in enumerate(placed, start=1):
            if is_pin:
                item = pinned_by_id[item_id]
                evidence = Evidence("pin", f"Featured at position {position}")
                scores: dict[str, float] = {}
                score = float(final.max()) if len(final) else 0.0
            else:
                index = by_id[item_id]
                item = candidates[index]
                if target is None:
                    evidence = Evidence("popularity", popularity_reason(item.score, signals.filtered))
                else:
                    evidence = explain(item, signals)
                scores = {name: float(values[index]) for name, values in stages.items()}
                scores["redundancy"] = redundancy[index]
                score = float(final[index])
                evidence = _with_boost(evidence, item, rules.boosts)
            items.append(
                Recommendation(
                    item.item_id,
                    score,
                    evidence.reason,
                    item.title,
                    item.categories,
                    stage_scores=scores if request.explain else {},
                    evidence=evidence.source,
                    pinned=is_pin,
                )
            )
        await self._record_impression(request, labels, items, degraded, clock)
        strategy = strategy if target is not None else "popular"
        result = labels.result(tuple(items), selection.has_more, strategy, model_version, _stages(degraded))
        if not uses_categories(rules, request.item_filter):
            return result
        # Reading every candidate's categories decodes its payload: 14% of the gateway's CPU when done for all calls.
        categories = [candidate.categories for candidate in candidates]
        return replace(result, warnings=category_warnings(rules, request.item_filter, categories))

    async def _shown_pages(self, catalog: str, recommendation_id: str, page: int) -> list[Impression]:
        """The recorded pages before `page`, with the pages this gateway answered and has not written yet. A page
        another gateway answered is written milliseconds after its answer: when one is missing, short waits
        cover it."""
        found: dict[int, Impression] = {}
        for wait_s in SHOWN_PAGE_WAITS_S:
            if wait_s:
                await asyncio.sleep(wait_s)
            stored = await self.retrieval.get_impressions(catalog, recommendation_id)
            found = {i.page: i for i in [*stored, *self.impressions.pending(catalog, recommendation_id)]}
            if all(number in found for number in range(1, page)):
                break
        return list(found.values())

    async def _record_impression(
        self,
        request: RecommendQuery,
        labels: _Labels,
        items: Sequence[Recommendation],
        degraded: list[str],
        clock: StageClock,
    ) -> None:
        """Stores the page as shown (for attribution, later pages and rotation), through the writer the caller
        does not wait for; when its queue is full, here. A failure does not fail the call: the items are sound,
        only their record is missing."""
        if not items:
            return
        impression = Impression(
            labels.recommendation_id,
            labels.page,
            request.user_id,
            tuple(item.item_id for item in items),
            labels.experiment,
            labels.arm,
            time.time(),
        )
        if self.impressions.submit(request.catalog, impression):
            return
        try:
            await clock.time("record", self.retrieval.record_impressions(request.catalog, [impression]))
        except UnavailableError as error:
            log.warning("could not record the impression", error=str(error))
            degraded.append("impressions")

    async def _suggest(
        self, request: RecommendQuery, tuning: Tuning, history_ids: Sequence[str], degraded: list[str]
    ) -> list[tuple[str, float]]:
        """Candidates from the ranker's item graph for the retriever to add to its pool: items that people with
        this history went on to, which the text profile's nearest neighbours miss. A ranker outage leaves the
        pool to retrieval alone."""
        limit = self.limits.graph_candidates
        if limit <= 0 or not history_ids or tuning.ranker_weight <= 0:
            return []
        recent = history_ids[-self.limits.history_for_ranking :]
        try:
            return await self.ranking.suggest(request.catalog, tuning.model_version, recent, limit)
        except ServiceError as error:
            log.warning("ranker could not suggest candidates; retrieval alone", error=str(error))
            degraded.append("ranker")
            return []

    async def _rank(
        self,
        request: RecommendQuery,
        tuning: Tuning,
        history: Sequence[StoredItem],
        candidates: Sequence[StoredItem],
        similarity: np.ndarray,
        degraded: list[str],
    ) -> tuple[np.ndarray, np.ndarray | None, str]:
        """(blended score in standard deviations, the ranker's raw scores or None, model version)."""
        if not history or not candidates or tuning.ranker_weight <= 0 or "ranker" in degraded:
            return zscores(similarity), None, ""
        try:
            ranking = await self.ranking.score(
                request.catalog, tuning.model_version, request.user_id, history, candidates
            )
        except ServiceError as error:
            # The retrieval order is a sound answer on its own; a ranker outage must not fail the call.
            log.warning("ranker unavailable; using retrieval order", error=str(error))
            degraded.append("ranker")
            return zscores(similarity), None, ""
        if ranking is None:  # no model for this catalog (yet): retrieval order, by design
            return zscores(similarity), None, ""
        raw = ranking.scores.astype(np.float64)
        w = tuning.ranker_weight
        return w * zscores(raw) + (1 - w) * zscores(similarity), raw, ranking.model_version

    # ---- similar items and search -------------------------------------------------------------------

    async def similar_items(
        self, item_id: str, k: int, item_filter: ItemFilter, catalog: str = DEFAULT_CATALOG
    ) -> list[Recommendation]:
        check_catalog(catalog)
        self._check_id(item_id, "item_id")
        self._check_filter(item_filter)
        k = self._k(k)
        (source,), strong = await asyncio.gather(
            self.retrieval.get_items(catalog, [item_id], skip_missing=False),
            self.similarity_scale.threshold(catalog),
        )
        found = await self.retrieval.similar(catalog, item_id, k, item_filter, [])
        filtered = item_filter.size() > 0
        return [
            Recommendation(
                i.item_id, i.score, similar_reason(source.title, i.score, strong, filtered), i.title, i.categories
            )
            for i in found
            if i.item_id != item_id
        ]

    async def search(self, query: str, k: int, item_filter: ItemFilter, catalog: str = DEFAULT_CATALOG) -> SearchResult:
        check_catalog(catalog)
        if not query.strip():
            raise InvalidArgumentError("query is empty: give the text to search for")
        self._check_query(query)
        self._check_filter(item_filter)
        k = self._k(k)
        degraded: list[str] = []

        async def embed_and_search() -> tuple[str, list[StoredItem]]:
            cleaned, vector = await self._query_vector(query, degraded, optional=False)
            return cleaned, await self.retrieval.search(catalog, vector, k, item_filter, [])

        cleaned, found = await self._on_serving_encoder(catalog, embed_and_search)
        reason = f"Matches {quote(cleaned)}"
        items = tuple(Recommendation(i.item_id, i.score, reason, i.title, i.categories) for i in found)
        return SearchResult(items, _stages(degraded))

    # ---- writes --------------------------------------------------------------------------------------

    async def upsert_items(self, records: Sequence[CatalogRecord], catalog: str = DEFAULT_CATALOG) -> tuple[int, int]:
        """Preprocess, embed, index. Returns (items written, texts truncated)."""
        check_catalog(catalog)
        if not records:
            raise InvalidArgumentError("items is empty: send at least one item")
        if len(records) > self.limits.max_items_per_upsert:
            raise InvalidArgumentError(
                f"{len(records)} items in one call; the limit is {self.limits.max_items_per_upsert}: split it"
            )
        seen: set[str] = set()
        for index, record in enumerate(records):
            self._check_id(record.item_id, f"items[{index}].item_id")
            if record.item_id in seen:
                raise InvalidArgumentError(f"items[{index}].item_id {record.item_id!r} appears twice")
            seen.add(record.item_id)
            if not record.title.strip():
                raise InvalidArgumentError(f"items[{index}] ({record.item_id}) has no title")
            for name, text in (("title", record.title), ("description", record.description)):
                if len(text) > self.limits.max_text_chars:
                    raise InvalidArgumentError(
                        f"items[{index}].{name} has {len(text)} characters; the limit is "
                        f"{self.limits.max_text_chars} (the model reads about 1,000): shorten it"
                    )
            clash = RESERVED_KEYS & set(record.attributes)
            if clash:
                raise InvalidArgumentError(f"items[{index}] attributes use reserved names {sorted(clash)}: rename them")
        texts = await self.text.build_item_texts(records)
        self._check_item_texts(texts)

        async def embed_and_write() -> int:
            vectors = await self.embedding.embed([t.text for t in texts])
            items = [
                NewItem(
                    record.item_id,
                    vector,
                    {
                        "title": record.title.strip(),
                        "categories": list(record.categories),
                        **record.attributes,
                    },
                    text.text,
                )
                for record, vector, text in zip(records, vectors, texts, strict=True)
            ]
            return await self.retrieval.upsert_items(catalog, items)

        written = await self._on_serving_encoder(catalog, embed_and_write)
        return written, sum(t.truncated for t in texts)

    async def record_events(self, events: Sequence[EventRecord], catalog: str = DEFAULT_CATALOG) -> RecordedEvents:
        check_catalog(catalog)
        if not events:
            raise InvalidArgumentError("events is empty: send at least one event")
        if len(events) > self.limits.max_events_per_call:
            raise InvalidArgumentError(
                f"{len(events)} events in one call; the limit is {self.limits.max_events_per_call}: split it"
            )
        now = time.time()
        for index, event in enumerate(events):
            self._check_id(event.user_id, f"events[{index}].user_id")
            self._check_id(event.item_id, f"events[{index}].item_id")
            if event.event_type not in self.event_weights:
                raise InvalidArgumentError(f"events[{index}] has unknown type {event.event_type!r}")
            problem = event_time_problem(event.timestamp, now)
            if problem:
                raise InvalidArgumentError(f"events[{index}].{problem}")
            if len(event.recommendation_id) > MAX_RECOMMENDATION_ID_CHARS:
                raise InvalidArgumentError(
                    f"events[{index}].recommendation_id has {len(event.recommendation_id)} characters; pass the "
                    "recommendation_id a Recommend response gave"
                )
            if len(event.event_id) > MAX_EVENT_ID_CHARS:
                raise InvalidArgumentError(
                    f"events[{index}].event_id has {len(event.event_id)} characters; the limit is {MAX_EVENT_ID_CHARS}"
                )
        # Check every item first, so a bad event stores nothing.
        items = list(dict.fromkeys(e.item_id for e in events))
        step = self.limits.retriever_batch
        await asyncio.gather(
            *(
                self.retrieval.get_items(catalog, items[i : i + step], skip_missing=False)
                for i in range(0, len(items), step)
            )
        )
        by_user: dict[str, list[HistoryEvent]] = {}
        # Ids derived from the content, in the call's order, so a retry of this call (ours or the caller's)
        # counts once.
        derive = EventIdDeriver()
        ids = [
            e.event_id or derive(e.user_id, e.item_id, e.event_type, e.timestamp, e.recommendation_id) for e in events
        ]
        for event, event_id in sorted(zip(events, ids, strict=True), key=lambda pair: pair[0].timestamp):
            weight = self.event_weights[event.event_type]
            by_user.setdefault(event.user_id, []).append(
                HistoryEvent(
                    event.item_id, event.event_type, event.timestamp, weight, event.recommendation_id, event_id
                )
            )
        # Bounded fan-out: a batch of many users must not exceed the retriever's admission limit.
        parallel = asyncio.Semaphore(self.limits.max_parallel_writes)
        unknown: list[str] = []

        async def append(user_id: str, user_events: list[HistoryEvent]) -> None:
            async with parallel:
                # In time order, in batches the retriever accepts.
                for start in range(0, len(user_events), step):
                    unknown.extend(
                        await self.retrieval.append_events(catalog, user_id, user_events[start : start + step])
                    )

        await asyncio.gather(*(append(u, evs) for u, evs in by_user.items()))
        # A page this gateway answered and has not written yet is known: its impression is on its way.
        unknown = [rid for rid in unknown if not self.impressions.pending(catalog, rid)]
        return RecordedEvents(len(events), tuple(dict.fromkeys(unknown)))

    async def delete_user(self, user_id: str, catalog: str = DEFAULT_CATALOG) -> None:
        check_catalog(catalog)
        self._check_id(user_id, "user_id")
        # Pages answered to the user before this call and not written yet must not land after the delete.
        await self.impressions.forget_user(catalog, user_id)
        await self.retrieval.delete_user(catalog, user_id)
        # The user's events no longer count towards popularity; the cache must not keep their trace.
        cache = self.popular_cache(catalog)
        cache.clear()
        with contextlib.suppress(UnavailableError):
            await cache.refresh()


def _stages(degraded: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(degraded))


async def _empty() -> list[StoredItem]:
    return []


async def _none() -> Profile | None:
    return None
