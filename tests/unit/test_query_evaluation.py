"""The personalised-search protocol's pieces: queries derived from the held-out item, query fidelity, the
catalog's top 5% of pairwise cosines."""

from __future__ import annotations

import random

import numpy as np

from services.datasets.loaders import CatalogItem
from services.evaluation.queries import derive_queries, query_fidelity, strong_cosine, title_words
from services.ranker.splits import Case

GLUE = CatalogItem(
    "g1", "Gorilla Original Gorilla Glue, Waterproof Polyurethane Glue, 8 ounce Bottle", "", ("Tapes", "Adhesives")
)


def test_title_words_skip_the_brand_filler_and_numbers() -> None:
    item = CatalogItem("g1", GLUE.title, brand="Gorilla")
    for seed in range(20):
        words = title_words(item, random.Random(seed)).split()
        assert 2 <= len(words) <= 3 and not {"Gorilla", "8"} & set(words)
        assert " ".join(words) in "Original Glue Waterproof Polyurethane Glue ounce Bottle"
    assert title_words(CatalogItem("x", "AB-12 Kit"), random.Random(0)) == ""


def test_each_case_gets_a_query_from_its_held_out_item() -> None:
    items = [GLUE, CatalogItem("t1", "Telescope", "", ("Optics", "Eyepieces"))]
    cases = [Case(f"u{n}", (0,), (n % 2,)) for n in range(40)]
    queries = derive_queries(cases, items, seed=0)
    assert len(queries) == 40
    assert {q.query for q in queries if q.case.targets == (1,)} == {"Eyepieces"}  # one word: the category
    kinds = {q.kind for q in queries if q.case.targets == (0,)}
    assert kinds == {"title", "category"}
    assert {q.query for q in queries if q.kind == "category" and q.case.targets == (0,)} == {"Adhesives"}


def test_fidelity_is_the_share_at_least_as_close_as_the_last_search_result() -> None:
    vectors = np.eye(4, dtype=np.float32)
    vectors[1] = np.asarray([0.8, 0.6, 0, 0], dtype=np.float32)
    vectors[2] = np.asarray([0.6, 0.8, 0, 0], dtype=np.float32)
    query = np.asarray([1, 0, 0, 0], dtype=np.float32)
    assert query_fidelity([0, 1], [0, 1], query, vectors) == 1.0
    assert query_fidelity([0, 2, 3, 1], [0, 1], query, vectors) == 0.5


def test_strong_cosine_is_the_95th_percentile_of_pairs() -> None:
    vectors = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs = (units @ units.T)[np.triu_indices(200, k=1)]
    bar = strong_cosine(vectors, seed=0)
    assert abs(bar - float(np.percentile(pairs, 95))) < 1e-5
    assert abs(float(np.mean(pairs >= bar)) - 0.05) < 1e-3
