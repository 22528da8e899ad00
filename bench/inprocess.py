"""The gateway's pipeline in one process: the same `Recommender`, its four ports bound to the backends' domain
objects (no gRPC, no serialisation), over the same data folder and checkpoints a suite used. The reference
that shows what the RPC hops cost."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from services.embedding.encoder import TextEncoder, default_model_path
from services.gateway.model import (
    Candidates,
    CatalogRecord,
    HistoryEvent,
    Impression,
    ItemFilter,
    ItemText,
    NewItem,
    Profile,
    Ranking,
    StoredItem,
)
from services.gateway.recommender import Blend, Recommender, RecommenderLimits
from services.preprocessor.app import build_preprocessor
from services.preprocessor.cleaning import ItemFields
from services.preprocessor.config import PreprocessorSettings
from services.ranker.model import ScoreRequest
from services.ranker.service import RankingService, ScoringLimits
from services.retriever import store as domain
from services.retriever.edge_store import EdgeVectorStore
from services.retriever.service import Retrieval

EVENT_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 4.0}


def _filter(item_filter: ItemFilter) -> domain.Filter:
    return domain.Filter(
        categories_any=item_filter.categories_any,
        keywords=dict(item_filter.keywords),
        ranges=dict(item_filter.ranges),
        flags=dict(item_filter.flags),
    )


def _stored(item: domain.ScoredItem | domain.Item, score: float = 0.0) -> StoredItem:
    vector = np.asarray(item.vector, dtype=np.float32) if item.vector is not None else None
    return StoredItem(item.item_id, score, dict(item.payload), vector)


class LocalText:
    def __init__(self) -> None:
        self._preprocessor = build_preprocessor(PreprocessorSettings())

    async def clean_query(self, text: str) -> str:
        return self._preprocessor.clean_many([text])[0].text

    async def build_item_texts(self, records: Sequence[CatalogRecord]) -> list[ItemText]:
        built = [
            self._preprocessor.build_item_text(ItemFields(r.item_id, r.title, r.description, tuple(r.categories)))
            for r in records
        ]
        return [ItemText(b.text, b.truncated) for b in built]


class LocalEmbedding:
    def __init__(self) -> None:
        self._encoder = TextEncoder(default_model_path())

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([e.vector for e in self._encoder.encode(list(texts))])

    async def embed_query(self, text: str) -> np.ndarray:
        vector: np.ndarray = (await self.embed([text]))[0]
        return vector


class LocalRetrieval:
    """The default catalog of the embedded engine at `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.retrieval = Retrieval(EdgeVectorStore(data_dir, 384), 1000, 512, 10**9, 4)

    async def search(
        self, catalog: str, vector: np.ndarray, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]:
        query = domain.SearchQuery(
            vector=vector.tolist(), limit=limit, filter=_filter(item_filter), exclude_ids=exclude_ids, with_vectors=True
        )
        (found,) = await self.retrieval.search([query])
        return [_stored(i, i.score) for i in found]

    async def candidates(
        self,
        catalog: str,
        vector: np.ndarray,
        limit: int,
        item_filter: ItemFilter,
        exclude_ids: Sequence[str],
        include_ids: Sequence[str],
        history_ids: Sequence[str],
    ) -> Candidates:
        nearest_query = domain.SearchQuery(
            vector=vector.tolist(), limit=limit, filter=_filter(item_filter), exclude_ids=exclude_ids, with_vectors=True
        )
        queries = [nearest_query]
        if include_ids:
            queries.append(replace(nearest_query, limit=len(include_ids), only_ids=tuple(include_ids)))
        if history_ids:
            queries.append(
                domain.SearchQuery(
                    vector=nearest_query.vector, limit=len(history_ids), only_ids=tuple(history_ids), with_vectors=True
                )
            )
        results = await self.retrieval.search(queries)
        nearest = [_stored(i, i.score) for i in results[0]]
        proposed: list[StoredItem] = []
        if include_ids:
            ids = {item.item_id for item in nearest}
            proposed = [_stored(i, i.score) for i in results[1] if i.item_id not in ids]
        found = {i.item_id: i for i in results[-1]} if history_ids else {}
        return Candidates(nearest, proposed, [_stored(found[i]) for i in history_ids if i in found])

    async def similar(
        self, catalog: str, item_id: str, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]:
        found = await self.retrieval.recommend([item_id], [], limit, _filter(item_filter), exclude_ids)
        return [_stored(i, i.score) for i in found]

    async def popular(
        self,
        catalog: str,
        limit: int,
        offset: int,
        item_filter: ItemFilter,
        exclude_ids: Sequence[str],
        with_vectors: bool = False,
    ) -> list[StoredItem]:
        found = await self.retrieval.popular(limit, _filter(item_filter), exclude_ids, offset)
        return [_stored(i, i.score) for i in found]

    async def get_items(self, catalog: str, item_ids: Sequence[str], skip_missing: bool) -> list[StoredItem]:
        return [_stored(i) for i in await self.retrieval.get_items(item_ids, True, skip_missing)]

    async def upsert_items(self, catalog: str, items: Sequence[NewItem]) -> int:
        return await self.retrieval.upsert_items(
            [domain.Item(i.item_id, tuple(float(v) for v in i.vector), dict(i.payload)) for i in items]
        )

    async def append_events(self, catalog: str, user_id: str, events: Sequence[HistoryEvent]) -> list[str]:
        _, unknown = await self.retrieval.append_user_events(
            user_id,
            [
                domain.UserEvent(e.item_id, e.event_type, e.timestamp, e.weight, e.recommendation_id, e.event_id)
                for e in events
            ],
        )
        return unknown

    async def get_profile(self, catalog: str, user_id: str) -> Profile | None:
        try:
            user = await self.retrieval.get_user(user_id)
        except domain.NotFoundError:
            return None
        events = tuple(HistoryEvent(e.item_id, e.event_type, e.timestamp, e.weight) for e in user.events)
        vector = np.asarray(user.vector, dtype=np.float32) if user.vector is not None else None
        return Profile(user.user_id, vector, events, dict(user.shown_counts))

    async def delete_user(self, catalog: str, user_id: str) -> None:
        await self.retrieval.delete_user(user_id)

    async def record_impressions(self, catalog: str, impressions: Sequence[Impression]) -> None:
        await self.retrieval.record_impressions(
            [
                domain.Impression(i.recommendation_id, i.page, i.user_id, i.item_ids, i.experiment, i.arm, i.timestamp)
                for i in impressions
            ]
        )

    async def get_impressions(self, catalog: str, recommendation_id: str) -> list[Impression]:
        try:
            found = await self.retrieval.get_impressions(recommendation_id)
        except domain.NotFoundError:
            return []
        return [
            Impression(i.recommendation_id, i.page, i.user_id, i.item_ids, i.experiment, i.arm, i.timestamp)
            for i in found
        ]

    async def close(self) -> None:
        await self.retrieval.close()


class LocalRanking:
    def __init__(self, checkpoint_dir: Path) -> None:
        self.service = RankingService(checkpoint_dir, "cpu", 3600.0, ScoringLimits(64, 2000, 500))

    async def score(
        self,
        catalog: str,
        model_version: str,
        user_id: str,
        history: Sequence[StoredItem],
        candidates: Sequence[StoredItem],
    ) -> Ranking | None:
        def vectors(items: Sequence[StoredItem]) -> np.ndarray:
            return np.stack([i.vector for i in items if i.vector is not None]).astype(np.float32)

        request = ScoreRequest(
            [i.item_id for i in history if i.vector is not None],
            vectors(history),
            [i.item_id for i in candidates if i.vector is not None],
            vectors(candidates),
        )
        scores, version = await self.service.score([request])
        return Ranking(scores[0], version)

    async def suggest(
        self, catalog: str, model_version: str, history_ids: Sequence[str], limit: int
    ) -> list[tuple[str, float]]:
        suggested, _ = await self.service.suggest(history_ids, limit, catalog, model_version)
        return suggested


async def local_recommender(
    data_dir: Path, checkpoint_dir: Path, candidate_pool: int, ranker_weight: float, graph_candidates: int
) -> tuple[Recommender, LocalRetrieval, LocalRanking]:
    retrieval, ranking = LocalRetrieval(data_dir), LocalRanking(checkpoint_dir)
    await ranking.service.reload_if_newer()
    recommender = Recommender(
        LocalText(),
        LocalEmbedding(),
        retrieval,
        ranking,
        RecommenderLimits(candidate_pool=candidate_pool, graph_candidates=graph_candidates),
        Blend(ranker_weight=ranker_weight),
        EVENT_WEIGHTS,
    )
    return recommender, retrieval, ranking
