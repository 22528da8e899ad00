"""What each console page shows, gathered from the suite's gRPC APIs through recsys_client. No HTTP here: the
routes in app.py parse the query string into these options and render the result."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from recsys_client import Boost, Filter, Recommendations, RecsysError, SimilarItems
from recsys_client.operator import GraphNeighbour, IndexStatus, ModelInfo, StoredItem, UserHistory
from recsys_client.operator import Impression as ImpressionRecord
from services.common.errors import InvalidArgumentError
from services.gateway.experiments import ArmReport, Experiments, report
from services.gateway.model import Impression

HEALTH_NAMES = {
    "gateway": "recsys.gateway.v1.GatewayService",
    "preprocessor": "recsys.preprocessor.v1.PreprocessorService",
    "embedding": "recsys.embedding.v1.EmbeddingService",
    "retriever": "recsys.retriever.v1.RetrieverService",
    "ranker": "recsys.ranker.v1.RankerService",
}


class Gateway(Protocol):
    """The gateway calls the console makes (recsys_client.AsyncRecsysClient)."""

    async def recommend(
        self,
        user_id: str = "",
        *,
        k: int = 10,
        query: str = "",
        filter: Filter | None = None,
        exclude_seen: bool | None = None,
        catalog: str = "",
        context_item_ids: Sequence[str] = (),
        diversity: float = 0.0,
        boosts: Sequence[Boost] = (),
        explain: bool = False,
    ) -> Recommendations: ...

    async def similar_items(self, item_id: str, *, k: int = 10, catalog: str = "") -> SimilarItems: ...


class Operator(Protocol):
    """The operators' reads (recsys_client.AsyncOperatorClient)."""

    async def health(self, address: str, service: str) -> str: ...
    async def user_history(self, user_id: str, catalog: str = "") -> UserHistory: ...
    async def items(self, item_ids: Sequence[str], catalog: str = "") -> dict[str, StoredItem]: ...
    async def index_status(self, catalog: str = "") -> IndexStatus: ...
    def impressions(
        self, catalog: str = "", experiment: str = "", limit: int = 100_000
    ) -> AsyncIterator[ImpressionRecord]: ...
    async def model_info(self, catalog: str = "") -> ModelInfo | None: ...
    async def graph_neighbours(
        self, item_id: str, catalog: str = "", limit: int = 10
    ) -> list[GraphNeighbour] | None: ...


@dataclass(frozen=True)
class RecommendOptions:
    """The knobs the user page lets an operator try live."""

    query: str = ""
    k: int = 10
    categories: Sequence[str] = ()
    diversity: float = 0.0
    boost_category: str = ""
    boost_weight: float = 0.0
    exclude_seen: bool = True


@dataclass(frozen=True)
class HistoryRow:
    item_id: str
    title: str
    event_type: str
    time: str


@dataclass(frozen=True)
class UserPage:
    user_id: str
    catalog: str
    options: RecommendOptions
    history: list[HistoryRow]
    recommendations: Recommendations


@dataclass(frozen=True)
class GraphRow:
    item_id: str
    title: str
    # The graph's score, or the reason the gateway gave.
    why: str


@dataclass(frozen=True)
class ItemPage:
    item_id: str
    catalog: str
    payload: dict[str, object]
    similar: SimilarItems
    graph_neighbours: list[GraphRow]
    shown: int
    engaged: int
    converted: int
    impressions_read: int


@dataclass(frozen=True)
class ExperimentChoice:
    name: str
    catalog: str
    arms: list[str]


@dataclass(frozen=True)
class ExperimentsPage:
    configured: list[ExperimentChoice]
    selected: ExperimentChoice | None
    rows: list[ArmReport] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    address: str
    status: str


@dataclass(frozen=True)
class CatalogStatus:
    catalog: str
    index: IndexStatus | None
    error: str


@dataclass(frozen=True)
class SuitePage:
    health: list[ServiceHealth]
    model: ModelInfo | None
    model_error: str
    catalogs: list[CatalogStatus]


def _time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _title(items: dict[str, StoredItem], item_id: str) -> str:
    stored = items.get(item_id)
    return str(stored.payload.get("title", "")) if stored is not None else ""


class Console:
    """Gathers each page's data; one instance per process, built in app.py."""

    def __init__(
        self,
        gateway: Gateway,
        operator: Operator,
        addresses: dict[str, str],
        catalogs: Sequence[str],
        experiments: Experiments,
        impression_scan_limit: int,
    ) -> None:
        self._gateway = gateway
        self._operator = operator
        self._addresses = addresses
        self.catalogs = ["", *catalogs]
        self._experiments = experiments
        self._scan_limit = impression_scan_limit

    async def user(self, user_id: str, catalog: str, options: RecommendOptions) -> UserPage:
        boosts = (
            [Boost(weight=options.boost_weight, category=options.boost_category)]
            if options.boost_category and options.boost_weight
            else []
        )
        history, recommendations = await asyncio.gather(
            self._operator.user_history(user_id, catalog),
            self._gateway.recommend(
                user_id,
                k=options.k,
                query=options.query,
                filter=Filter(categories_any=options.categories) if options.categories else None,
                exclude_seen=options.exclude_seen,
                catalog=catalog,
                diversity=options.diversity,
                boosts=boosts,
                explain=True,
            ),
        )
        # The newest first, as an operator reads a history.
        events = list(reversed(history.events))
        items = await self._operator.items(list(dict.fromkeys(e.item_id for e in events)), catalog)
        rows = [HistoryRow(e.item_id, _title(items, e.item_id), e.event_type, _time(e.timestamp)) for e in events]
        return UserPage(user_id, catalog, options, rows, recommendations)

    async def item(self, item_id: str, catalog: str) -> ItemPage:
        stored, similar, graph = await asyncio.gather(
            self._operator.items([item_id], catalog),
            self._gateway.similar_items(item_id, k=10, catalog=catalog),
            self._graph_rows(item_id, catalog),
        )
        shown = engaged = converted = read = 0
        async for impression in self._operator.impressions(catalog, limit=self._scan_limit):
            read += 1
            shown += item_id in impression.item_ids
            engaged += item_id in impression.engaged_item_ids
            converted += item_id in impression.converted_item_ids
        payload = dict(stored[item_id].payload) if item_id in stored else {}
        return ItemPage(item_id, catalog, payload, similar, graph, shown, engaged, converted, read)

    async def _graph_rows(self, item_id: str, catalog: str) -> list[GraphRow]:
        """The ranker's item-graph neighbours when the console can reach the ranker; otherwise what the gateway
        attributes to the graph when the item is a session's only item (also when the ranker has no model for the
        catalog)."""
        try:
            neighbours = await self._operator.graph_neighbours(item_id, catalog)
        except RecsysError:
            neighbours = None
        if neighbours is not None:
            titles = await self._operator.items([n.item_id for n in neighbours], catalog)
            return [GraphRow(n.item_id, _title(titles, n.item_id), f"graph score {n.score:.3f}") for n in neighbours]
        session = await self._gateway.recommend(context_item_ids=[item_id], k=30, catalog=catalog, explain=True)
        return [
            GraphRow(i.item_id, i.title, i.reason)
            for i in session.items
            if i.explanation is not None and i.explanation.evidence == "graph"
        ]

    def configured_experiments(self) -> list[ExperimentChoice]:
        choices = []
        for catalog in self.catalogs:
            experiment = self._experiments.for_catalog(catalog)
            if experiment is not None:
                choices.append(ExperimentChoice(experiment.name, catalog, [arm.name for arm in experiment.arms]))
        return choices

    async def experiments(self, name: str, catalog: str) -> ExperimentsPage:
        configured = self.configured_experiments()
        if not name:
            return ExperimentsPage(configured, None)
        known = next((c for c in configured if c.name == name and c.catalog == catalog), None)
        selected = known or ExperimentChoice(name, catalog, ["control"])
        impressions = [
            Impression(
                recommendation_id=i.recommendation_id,
                page=i.page,
                user_id=i.user_id,
                item_ids=i.item_ids,
                experiment=i.experiment,
                arm=i.arm,
                timestamp=i.timestamp,
                engaged_item_ids=i.engaged_item_ids,
                converted_item_ids=i.converted_item_ids,
            )
            async for i in self._operator.impressions(catalog, name, limit=self._scan_limit)
        ]
        try:
            rows = report(name, selected.arms, impressions)
        except InvalidArgumentError as error:
            return ExperimentsPage(configured, selected, message=str(error))
        return ExperimentsPage(configured, selected, rows)

    async def suite(self) -> SuitePage:
        names = list(self._addresses)
        statuses = await asyncio.gather(
            *(self._operator.health(self._addresses[name], HEALTH_NAMES[name]) for name in names)
        )
        health = [ServiceHealth(n, self._addresses[n], s) for n, s in zip(names, statuses, strict=True)]
        model, model_error = None, ""
        try:
            model = await self._operator.model_info()
        except RecsysError as error:
            model_error = str(error)
        catalogs = []
        for catalog in self.catalogs:
            try:
                catalogs.append(CatalogStatus(catalog, await self._operator.index_status(catalog), ""))
            except RecsysError as error:  # shown on the catalog's row rather than failing the page
                catalogs.append(CatalogStatus(catalog, None, str(error)))
        return SuitePage(health, model, model_error, catalogs)
