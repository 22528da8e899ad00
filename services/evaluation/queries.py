"""Personalised search through a running suite: does a free-text query steer Recommend for a user with history?

For each sampled user a query is derived from the held-out item (two or three content words of its title, or its
most specific category; a seeded coin picks where both exist). The user's history is replayed through the
gateway's RecordEvents as a fresh user (``eval-<user id>``, deleted before and after), then three answers of 10 are
scored on the same users: ``search only`` (SearchItems, no user), ``recommend only`` (Recommend, no query) and
``personalised+query`` (Recommend with the query), each for Recall@10 and NDCG@10 against the held-out item and
for query fidelity: the share of its 10 whose cosine to the query is at least the 10th search-only result's. The
cosines are the eval's own (the item vectors and the query's from the embedding service's model, loaded here; the
queries are plain words, which cleaning leaves as they are), so the three rows are measured alike.

Reasons: every reason of the two Recommend answers that names an item (its explanation's evidence) is checked
against the catalog: the share whose named item's cosine to the recommended one is in the top 5% of the catalog's
pairwise cosines.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from recsys_client import RecsysClient
from services.datasets.loaders import CatalogItem
from services.evaluation.served import delete_user, history_events, sample_cases
from services.ranker.metrics import per_user_metrics
from services.ranker.splits import Case, Split

ROWS = ("search only", "recommend only", "personalised+query")
K = 10
STRONG_PERCENTILE = 95.0
PAIR_SAMPLE = 3000  # items whose pairwise cosines set the catalog's top 5%
# Words that say nothing about what an item is; a query made of them would test nothing.
FILLER = frozenset(
    {
        *("and", "for", "with", "the", "from", "into", "per", "pack", "set", "kit", "inch", "inches", "size"),
        *("each", "new", "black", "white", "blue", "red", "green"),
    }
)
WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")


@dataclass(frozen=True)
class QueryCase:
    case: Case
    query: str
    kind: str  # "title" or "category"


@dataclass(frozen=True)
class Answer:
    """One user's three answers (item ids, best first) and the named evidence of the Recommend answers."""

    rows: dict[str, list[str]]
    query_vector: np.ndarray
    evidence: list[tuple[str, str]] = field(default_factory=list)  # (recommended item, the item its reason names)


@dataclass(frozen=True)
class QueryResult:
    users: int
    kinds: dict[str, int]
    metrics: dict[str, dict[str, float]]  # row -> metric -> mean
    reasons_named: int  # reasons that name an item
    reasons_strong: float  # share of those whose named item is in the catalog's top 5% of pairwise cosines
    strong_cosine: float  # that top 5% bar
    model_version: str

    def to_dict(self) -> dict[str, object]:
        return {
            "users": self.users,
            "query_kinds": self.kinds,
            "rows": {row: {m: round(v, 6) for m, v in values.items()} for row, values in self.metrics.items()},
            "reasons_naming_an_item": self.reasons_named,
            "reasons_strong_share": round(self.reasons_strong, 6),
            "strong_cosine_top5pct": round(self.strong_cosine, 6),
            "model_version": self.model_version,
        }


def title_words(item: CatalogItem, rng: random.Random) -> str:
    """Two or three consecutive content words of the title (no brand, no filler, no model numbers); "" when the
    title has fewer than two."""
    brand = {w.lower() for w in WORD.findall(item.brand)}
    words = [w for w in WORD.findall(item.title) if w.lower() not in FILLER and w.lower() not in brand]
    if len(words) < 2:
        return ""
    size = min(len(words), rng.choice((2, 3)))
    start = rng.randrange(len(words) - size + 1)
    return " ".join(words[start : start + size])


def derive_queries(cases: Sequence[Case], items: Sequence[CatalogItem], seed: int) -> list[QueryCase]:
    """A query per case from its (first) held-out item; cases whose item gives neither kind are left out."""
    rng = random.Random(seed)
    derived = []
    for case in cases:
        item = items[case.targets[0]]
        words = title_words(item, rng)
        category = item.categories[-1] if item.categories else ""
        use_category = bool(category) and (not words or rng.random() < 0.5)
        if use_category:
            derived.append(QueryCase(case, category, "category"))
        elif words:
            derived.append(QueryCase(case, words, "title"))
    return derived


def strong_cosine(vectors: np.ndarray, seed: int, percentile: float = STRONG_PERCENTILE) -> float:
    """The cosine at `percentile` of the pairwise cosines among up to PAIR_SAMPLE items drawn with the seed."""
    rows = np.asarray(vectors, dtype=np.float32)
    if len(rows) > PAIR_SAMPLE:
        rows = rows[np.random.default_rng(seed).choice(len(rows), PAIR_SAMPLE, replace=False)]
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    upper = np.triu_indices(len(rows), k=1)
    return float(np.percentile((rows @ rows.T)[upper], percentile))


def query_evaluation(
    gateway: RecsysClient,
    embed: Callable[[Sequence[str]], np.ndarray],
    split: Split,
    items: Sequence[CatalogItem],
    text: np.ndarray,
    *,
    cases: Sequence[Case],
    users: int,
    seed: int,
    workers: int = 4,
    timeout_s: float = 30.0,
) -> QueryResult:
    queries = derive_queries(sample_cases(cases, users, seed), items, seed)
    query_vectors = np.asarray(embed([q.query for q in queries]), dtype=np.float32)
    versions: set[str] = set()

    def ask(n: int) -> Answer:
        case, query = queries[n].case, queries[n].query
        name = f"eval-{case.user_id}"
        delete_user(gateway, name, timeout_s)
        history = [split.item_ids[i] for i in case.history]
        events = history_events(name, history)
        for start in range(0, len(events), 1000):
            gateway.record_events(events[start : start + 1000], deadline=timeout_s)
        searched = gateway.search(query, k=K, deadline=timeout_s)
        alone = gateway.recommend(name, k=K, explain=True, deadline=timeout_s)
        steered = gateway.recommend(name, query=query, k=K, explain=True, deadline=timeout_s)
        delete_user(gateway, name, timeout_s)
        versions.update((alone.model_version, steered.model_version))
        evidence = [
            (item.item_id, item.explanation.evidence)
            for response in (alone, steered)
            for item in response.items
            if item.explanation is not None and item.explanation.evidence
        ]
        return Answer(
            {
                ROWS[0]: [i.item_id for i in searched.items],
                ROWS[1]: [i.item_id for i in alone.items],
                ROWS[2]: [i.item_id for i in steered.items],
            },
            query_vectors[n],
            evidence,
        )

    with ThreadPoolExecutor(workers) as executor:
        answers = list(tqdm(executor.map(ask, range(len(queries))), total=len(queries), desc="queries", unit="user"))

    position = {item_id: n for n, item_id in enumerate(split.item_ids)}
    vectors = np.asarray(text, dtype=np.float32)
    metrics = {row: _row_metrics(row, queries, answers, position, vectors) for row in ROWS}
    bar = strong_cosine(vectors, seed)
    named = [(position[a], position[b]) for answer in answers for a, b in answer.evidence if b in position]
    strong = sum(float(vectors[a] @ vectors[b]) >= bar for a, b in named)
    kinds = {kind: sum(q.kind == kind for q in queries) for kind in ("title", "category")}
    return QueryResult(
        users=len(queries),
        kinds=kinds,
        metrics=metrics,
        reasons_named=len(named),
        reasons_strong=strong / len(named) if named else 0.0,
        strong_cosine=bar,
        model_version=",".join(sorted(v for v in versions if v)),
    )


def _row_metrics(
    row: str,
    queries: Sequence[QueryCase],
    answers: Sequence[Answer],
    position: dict[str, int],
    vectors: np.ndarray,
) -> dict[str, float]:
    ranks = torch.full((len(queries), 1), torch.inf)
    fidelity = []
    for n, (query, answer) in enumerate(zip(queries, answers, strict=True)):
        returned = [position[i] for i in answer.rows[row] if i in position][:K]
        if query.case.targets[0] in returned:
            ranks[n, 0] = returned.index(query.case.targets[0])
        searched = [position[i] for i in answer.rows[ROWS[0]] if i in position]
        fidelity.append(query_fidelity(returned, searched, answer.query_vector, vectors))
    values = per_user_metrics(ranks, torch.ones(len(queries)), (K,))
    return {
        f"recall@{K}": float(values[f"recall@{K}"].mean()),
        f"ndcg@{K}": float(values[f"ndcg@{K}"].mean()),
        "query_fidelity": float(np.mean(fidelity)) if fidelity else 0.0,
    }


def query_fidelity(returned: Sequence[int], searched: Sequence[int], query: np.ndarray, vectors: np.ndarray) -> float:
    """Share of the returned items whose cosine to the query is at least the last search-only result's."""
    if not returned or not searched:
        return 0.0
    bar = float((vectors[list(searched)] @ query).min())
    return float(np.mean(vectors[list(returned)] @ query >= bar))
