"""Issue 20, cases 2 and 6: reasons are true. A reason names a history item only when it is truly similar (the
catalog's top 5% of pairwise cosines), the item graph only when its link is strong, never an item as similar to
itself; otherwise it says why the item is there. Reasons quote the query as the preprocessor cleaned it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.common.errors import UnavailableError
from services.gateway.model import CatalogRecord, EventRecord, ItemFilter, ItemText, Ranking, StoredItem
from services.gateway.reasons import strong_similarity
from services.gateway.recommender import RecommendQuery
from tests.unit.music_catalog import CatalogRetrieval, HistoryRanker, recommender

UNDER_10 = ItemFilter(ranges={"price": (None, 10.0)})


async def test_a_filtered_item_is_not_called_similar_to_an_unrelated_purchase() -> None:
    """Wood glue under a price filter, for a user who added a soldering station to the cart."""
    retrieval = CatalogRetrieval()
    recommending = recommender(retrieval, HistoryRanker(retrieval))
    await recommending.record_events([EventRecord("maker", "heat", "add_to_cart", 1.0)])
    result = await recommending.recommend(RecommendQuery(user_id="maker", k=2, item_filter=UNDER_10))
    assert {i.item_id for i in result.items} == {"wood-glue", "epoxy"}
    for item in result.items:
        assert "Similar to" not in item.reason and "HeatPro" not in item.reason
        assert item.reason == "Matches your filter; ranked for your history as a whole"
    unfiltered = await recommending.recommend(RecommendQuery(user_id="maker", k=1))
    assert unfiltered.items[0].item_id == "tip"
    assert unfiltered.items[0].reason == "Similar to “HeatPro 60W soldering station”, which you added to your cart"


async def test_similar_items_say_similar_only_when_they_are() -> None:
    """GetSimilarItems(pipette) in a catalog with no other pipette answers a telescope and glue: the nearest
    there are, not similar ones."""
    retrieval = CatalogRetrieval()
    recommending = recommender(retrieval, HistoryRanker(retrieval))
    nearest = await recommending.similar_items("pipette", 3, ItemFilter())
    assert nearest and all("Similar to" not in i.reason for i in nearest)
    assert nearest[0].reason == "Among the nearest to “LabMate micropipette”, though not closely similar"
    filtered = await recommending.similar_items("pipette", 2, UNDER_10)
    assert filtered[0].reason.startswith("Matches your filter")
    bands = await recommending.similar_items("Stryper", 3, ItemFilter())
    assert bands[0].reason == "Similar to “Stryper”" and "Stryper" not in [i.item_id for i in bands]


async def test_a_seen_item_is_never_similar_to_itself() -> None:
    retrieval = CatalogRetrieval()
    recommending = recommender(retrieval, HistoryRanker(retrieval))
    await recommending.record_events([EventRecord("fan", "Kraftwerk", "purchase", 1.0)])
    result = await recommending.recommend(RecommendQuery(user_id="fan", k=6, exclude_seen=False))
    reasons = {i.item_id: i.reason for i in result.items}
    assert reasons["Kraftwerk"] == "You bought it before"
    assert all("Kraftwerk" not in reason for item_id, reason in reasons.items() if item_id == "Kraftwerk")


class GraphRanker(HistoryRanker):
    """A ranker whose item graph links the history to `linked` with `graph_score`, and which prefers them."""

    def __init__(self, retrieval: CatalogRetrieval, linked: Sequence[str], graph_score: float) -> None:
        super().__init__(retrieval, graph_score)
        self.linked = list(linked)

    async def score(
        self,
        catalog: str,
        model_version: str,
        user_id: str,
        history: Sequence[StoredItem],
        candidates: Sequence[StoredItem],
    ) -> Ranking:
        return Ranking(np.asarray([float(c.item_id in self.linked) for c in candidates], dtype=np.float32), "v1")

    async def suggest(
        self, catalog: str, model_version: str, history_ids: Sequence[str], limit: int
    ) -> list[tuple[str, float]]:
        return [(item_id, self.graph_score) for item_id in self.linked[:limit]]


async def test_the_item_graph_is_named_only_for_a_strong_link() -> None:
    """A user who bought a pipette and a soldering station, shown telescope parts the graph links only weakly:
    not "often chosen by people with a history like yours"."""
    linked = ("telescope", "eyepiece")
    for graph_score, says_often in ((0.2, False), (2.0, True)):
        retrieval = CatalogRetrieval()
        recommending = recommender(retrieval, GraphRanker(retrieval, linked, graph_score))
        await recommending.record_events(
            [EventRecord("lab", i, "purchase", float(n)) for n, i in enumerate(("pipette", "heat"))]
        )
        result = await recommending.recommend(RecommendQuery(user_id="lab", k=2))
        assert {i.item_id for i in result.items} == set(linked)
        for item in result.items:
            often = item.reason == "Often chosen by people with a history like yours"
            assert often is says_often, (graph_score, item.reason)
            assert says_often or item.reason == "Ranked for your history as a whole"


async def test_reasons_quote_the_cleaned_query() -> None:
    retrieval = CatalogRetrieval()
    recommending = recommender(retrieval, HistoryRanker(retrieval))
    raw = "<img src=x onerror=alert(1)>wood \u202eglue"
    found = await recommending.search(raw, 2, ItemFilter())
    assert found.items[0].reason == "Matches “wood glue”"
    steered = await recommending.recommend(RecommendQuery(query=raw, k=2))
    assert steered.items[0].reason == "Matches your search “wood glue”"
    for item in (*found.items, *steered.items):
        assert "<" not in item.reason and "\u202e" not in item.reason


class DownText:
    """The text port while the preprocessor is down."""

    async def clean_query(self, text: str) -> str:
        raise UnavailableError("the preprocessor service did not answer (UNAVAILABLE); retry")

    async def build_item_texts(self, records: Sequence[CatalogRecord]) -> list[ItemText]:
        raise UnavailableError("the preprocessor service did not answer (UNAVAILABLE); retry")


async def test_reasons_never_quote_markup_while_the_preprocessor_is_down() -> None:
    retrieval = CatalogRetrieval()
    recommending = recommender(retrieval, HistoryRanker(retrieval))
    recommending.text = DownText()
    raw = "<img src=x onerror=alert(1)>wood \u202eglue"
    found = await recommending.search(raw, 2, ItemFilter())
    assert found.degraded == ("preprocessor",)
    assert found.items[0].reason == "Matches “wood glue”"
    steered = await recommending.recommend(RecommendQuery(query=raw, k=2))
    assert steered.degraded == ("preprocessor",)
    assert steered.items[0].reason == "Matches your search “wood glue”"


def test_the_similarity_bar_is_a_high_percentile_of_the_catalog_s_pairs() -> None:
    vectors = np.eye(4, dtype=np.float32)
    vectors[1] = (vectors[0] + vectors[1]) / np.sqrt(2)  # one close pair among six
    assert abs(strong_similarity(vectors, 95.0) - np.sqrt(0.5)) < 1e-5
    assert strong_similarity(vectors[:1], 95.0) == float("inf")
