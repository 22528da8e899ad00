"""A small synthetic catalog for the gateway's query and reason tests: three genres of artists, each a unit vector
along its genre's axis with seeded noise, and a few items of an electronics-and-lab shop. The fakes around it are
the gateway's ports as the real backends behave (cosine search with filters and exclusions, popularity order, a
ranker that scores from the history alone)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from services.gateway.config import GatewaySettings
from services.gateway.model import CatalogRecord, ItemText, Ranking, StoredItem
from services.gateway.recommender import Blend, Recommender, RecommenderLimits
from services.preprocessor.cleaning import TextPreprocessor
from services.preprocessor.tokens import HuggingFaceTokenBudget, default_model_path
from tests.unit.test_gateway_recommender import FakeRetrieval

DIM = 24
AXES = {"synth-pop": 0, "heavy metal": 1, "classical piano": 2, "soldering": 3, "glue": 4, "pipette": 5, "optics": 6}
ARTISTS = {
    "synth-pop": ("Kraftwerk", "a-ha", "Erasure", "Ultravox", "Simple Minds", "Depeche Mode", "Pet Shop Boys"),
    "heavy metal": ("Stryper", "Manowar", "Judas Priest", "Iron Maiden", "Metallica", "Saxon", "Motorhead"),
    "classical piano": ("Glenn Gould", "Martha Argerich", "Alfred Brendel", "Mitsuko Uchida", "Lang Lang"),
}
SHOP = {
    "heat": ("soldering", "HeatPro 60W soldering station", 89.0),
    "tip": ("soldering", "Soldering tip set", 19.0),
    "wood-glue": ("glue", "Wood glue", 7.0),
    "epoxy": ("glue", "Epoxy glue", 9.0),
    "pipette": ("pipette", "LabMate micropipette", 120.0),
    "telescope": ("optics", "Backyard telescope", 150.0),
    "eyepiece": ("optics", "Telescope eyepiece", 45.0),
}
# The one metal band a synth-pop listener likes best: metal, with a synth-pop side.
CROSSOVER = "Motorhead"


def _vector(rng: np.random.Generator, axis: int, lean: int | None = None) -> np.ndarray:
    v = np.zeros(DIM)
    v[axis] = 1.0
    if lean is not None:
        v[lean] = 0.3
    v[len(AXES) :] = rng.normal(0.0, 0.12, DIM - len(AXES))
    return (v / np.linalg.norm(v)).astype(np.float32)


def catalog() -> dict[str, StoredItem]:
    rng = np.random.default_rng(7)
    items = {}
    for genre, artists in ARTISTS.items():
        for artist in artists:
            lean = AXES["synth-pop"] if artist == CROSSOVER else None
            payload = {"title": artist, "categories": ["music", genre], "popularity": 0.0}
            items[artist] = StoredItem(artist, 0.0, payload, _vector(rng, AXES[genre], lean))
    for item_id, (kind, title, price) in SHOP.items():
        payload = {"title": title, "categories": ["shop", kind], "price": price}
        items[item_id] = StoredItem(item_id, 0.0, payload, _vector(rng, AXES[kind]))
    # The station's own tips: a near twin of it.
    twin = items["heat"].vector + rng.normal(0.0, 0.03, DIM)  # type: ignore[operator]
    items["tip"] = StoredItem("tip", 0.0, items["tip"].payload, (twin / np.linalg.norm(twin)).astype(np.float32))
    return items


def genre(item_id: str) -> str:
    return next((g for g, artists in ARTISTS.items() if item_id in artists), "shop")


class CatalogRetrieval(FakeRetrieval):
    """The fake retriever over this catalog; popularity is catalog order, and the popular list carries no vectors
    (as the retriever's ListPopularItems)."""

    def __init__(self) -> None:
        super().__init__()
        self.items[""] = catalog()

    async def popular(
        self,
        catalog: str,
        limit: int,
        offset: int,
        item_filter: object,
        exclude_ids: Sequence[str],
        with_vectors: bool = False,
    ) -> list[StoredItem]:
        kept = [
            StoredItem(i.item_id, 0.0, i.payload)
            for i in self._catalog(catalog).values()
            if i.item_id not in exclude_ids
        ]
        return kept[offset : offset + limit]


class RealText:
    """The preprocessor's own cleaning (markup, control and direction characters) behind the text port."""

    def __init__(self) -> None:
        budget = HuggingFaceTokenBudget.from_model_path(default_model_path())
        self._cleaner = TextPreprocessor(budget, max_tokens=256)

    async def clean_query(self, text: str) -> str:
        return self._cleaner.clean(text).text

    async def build_item_texts(self, records: Sequence[CatalogRecord]) -> list[ItemText]:
        return [ItemText(self._cleaner.clean(r.title).text, False) for r in records]


class WordEmbedding:
    """A query's vector: the axes of the genres and kinds its words name."""

    WORDS: Mapping[str, str] = {
        "synth": "synth-pop",
        "metal": "heavy metal",
        "guitar": "heavy metal",
        "piano": "classical piano",
        "classical": "classical piano",
        "glue": "glue",
        "telescope": "optics",
        "eyepiece": "optics",
        "soldering": "soldering",
    }

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self._one(t) for t in texts])

    async def embed_query(self, text: str) -> np.ndarray:
        return self._one(text)

    def _one(self, text: str) -> np.ndarray:
        v = np.zeros(DIM, dtype=np.float32)
        for word in text.lower().split():
            if word in self.WORDS:
                v[AXES[self.WORDS[word]]] += 1.0
        norm = float(np.linalg.norm(v))
        return v / norm if norm else v


class HistoryRanker:
    """A ranker that scores from the history alone (cosine to its mean) and an item graph that proposes the
    history's own kind of item: what drowned a query before."""

    def __init__(self, retrieval: CatalogRetrieval, graph_score: float = 2.0) -> None:
        self.retrieval = retrieval
        self.graph_score = graph_score

    async def score(
        self,
        catalog: str,
        model_version: str,
        user_id: str,
        history: Sequence[StoredItem],
        candidates: Sequence[StoredItem],
    ) -> Ranking:
        taste = np.mean([h.vector for h in history if h.vector is not None], axis=0)
        scores = np.asarray([float(c.vector @ taste) if c.vector is not None else 0.0 for c in candidates])
        return Ranking(scores.astype(np.float32), "v1")

    async def suggest(
        self, catalog: str, model_version: str, history_ids: Sequence[str], limit: int
    ) -> list[tuple[str, float]]:
        items = self.retrieval.items[catalog]
        kinds = {items[i].categories[-1] for i in history_ids}
        linked = [i for i, item in items.items() if item.categories[-1] in kinds and i not in history_ids]
        return [(item_id, self.graph_score) for item_id in linked[:limit]]


def recommender(retrieval: CatalogRetrieval, ranking: HistoryRanker) -> Recommender:
    """The gateway's domain with its served settings (ranker weight, query weight, pool sizes)."""
    settings = GatewaySettings()
    return Recommender(
        RealText(),
        WordEmbedding(),
        retrieval,
        ranking,
        RecommenderLimits(candidate_pool=12, graph_candidates=10),
        Blend(ranker_weight=settings.ranker_weight, query_weight=settings.query_weight),
        {"view": 1.0, "add_to_cart": 3.0, "purchase": 4.0},
    )
