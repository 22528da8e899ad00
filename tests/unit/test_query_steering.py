"""Issue 20, case 1: a free-text query steers Recommend for a user with history. A synth-pop listener who asks
for "heavy metal guitar" gets metal (not the same synth-pop as without a query), ordered by what the listener
likes among it; "classical piano" gets piano. Before the fix the ranker (history alone, weight 1.0) and the item
graph's synth-pop candidates drowned the query."""

from __future__ import annotations

import numpy as np
import pytest

from services.gateway.model import EventRecord, ItemFilter
from services.gateway.recommender import Recommender, RecommendQuery
from tests.unit.music_catalog import ARTISTS, CROSSOVER, CatalogRetrieval, HistoryRanker, genre, recommender

K = 5


@pytest.fixture
async def listener() -> tuple[Recommender, CatalogRetrieval]:
    retrieval = CatalogRetrieval()
    recommending = recommender(retrieval, HistoryRanker(retrieval))
    history = ARTISTS["synth-pop"][:4]
    await recommending.record_events([EventRecord("0", a, "view", float(n)) for n, a in enumerate(history)])
    return recommending, retrieval


async def _fidelity(recommending: Recommender, retrieval: CatalogRetrieval, query: str, returned: list[str]) -> float:
    """Share of the returned items whose cosine to the query is at least the k-th search-only result's."""
    vector = await recommending.embedding.embed_query(query)
    items = retrieval.items[""]
    searched = await recommending.search(query, len(returned), ItemFilter())
    bar = min(float(items[i.item_id].vector @ vector) for i in searched.items)
    return float(np.mean([float(items[i].vector @ vector) >= bar for i in returned]))


@pytest.mark.parametrize(
    "query,wanted", [("heavy metal guitar", "heavy metal"), ("classical piano", "classical piano")]
)
async def test_a_query_steers_a_listener_with_history(
    listener: tuple[Recommender, CatalogRetrieval], query: str, wanted: str
) -> None:
    recommending, retrieval = listener
    plain = await recommending.recommend(RecommendQuery(user_id="0", k=K))
    assert [genre(i.item_id) for i in plain.items][:3] == ["synth-pop"] * 3  # the three unseen synth-pop artists
    steered = await recommending.recommend(RecommendQuery(user_id="0", query=query, k=K))
    returned = [i.item_id for i in steered.items]
    assert steered.strategy == "personalised+query"
    assert [genre(i) for i in returned] == [wanted] * K, returned
    assert await _fidelity(recommending, retrieval, query, returned) >= 0.8


async def test_the_listener_s_taste_orders_what_matches(listener: tuple[Recommender, CatalogRetrieval]) -> None:
    """Among the metal bands, the one with a synth-pop side comes first for a synth-pop listener, though the
    search alone does not put it first."""
    recommending, _ = listener
    searched = await recommending.search("heavy metal guitar", K, ItemFilter())
    assert searched.items[0].item_id != CROSSOVER
    steered = await recommending.recommend(RecommendQuery(user_id="0", query="heavy metal guitar", k=K))
    assert steered.items[0].item_id == CROSSOVER
