"""Served evaluation: replay test users' histories into a running suite and score what Recommend returns.

Each sampled test user becomes a fresh user (``eval-<user id>``, deleted before and after) whose test history is
sent through the gateway's RecordEvents; Recommend (seen items excluded, the gateway's default) then answers with
the served ranking. The same users are scored offline by the checkpoint the ranker serves, over the full catalog
with seen items masked; the two must agree. Candidate recall is the share of test targets inside the pool the
ranker scores: the retriever's ``candidate_pool`` nearest items to the user's profile vector (seen items excluded)
plus the ``graph_candidates`` items the checkpoint's item graph proposes for the history, as the gateway builds it.
It is the one place where serving can lose what full ranking finds.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import numpy as np
import torch
from tqdm.auto import tqdm

from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from recsys_client import Event, NotFoundError, RecsysClient
from services.ranker.metrics import KS, per_user_metrics
from services.ranker.model import RankerScorer
from services.ranker.scoring import evaluate
from services.ranker.splits import Case, Split
from services.ranker.training import CatalogScorer

BASE_TIME = 1_600_000_000  # event times: a fixed start plus the history position, so replays are identical


@dataclass(frozen=True)
class ServedResult:
    users: int
    served: dict[str, float]
    offline: dict[str, float]
    candidate_recall: float  # targets in the pool the ranker scores: nearest items plus item-graph candidates
    candidate_recall_nearest: float  # targets among the nearest items alone
    candidate_pool: int
    graph_candidates: int
    model_version: str

    def relative_gap(self, metric: str) -> float:
        """(offline - served) / offline; positive when serving loses."""
        offline = self.offline[metric]
        return (offline - self.served[metric]) / offline if offline else 0.0


def sample_cases(cases: Sequence[Case], users: int, seed: int) -> list[Case]:
    cases = list(cases)
    return cases if len(cases) <= users else random.Random(seed).sample(cases, users)


def history_events(user_id: str, history: Sequence[str]) -> list[Event]:
    return [
        Event(user_id, item_id, "view", time=datetime.fromtimestamp(BASE_TIME + position, UTC))
        for position, item_id in enumerate(history)
    ]


def delete_user(gateway: RecsysClient, user_id: str, timeout_s: float) -> None:
    """Deletes the user if the suite knows it: a replay starts from nothing and leaves nothing behind."""
    with contextlib.suppress(NotFoundError):
        gateway.delete_user(user_id, deadline=timeout_s)


def served_evaluation(
    gateway: RecsysClient,
    retriever: grpc.Channel,
    split: Split,
    text: np.ndarray,
    scorer: RankerScorer,
    *,
    users: int,
    seed: int,
    candidate_pool: int,
    graph_candidates: int,
    history_for_ranking: int,
    k: int = max(KS),
    workers: int = 8,
    timeout_s: float = 30.0,
) -> ServedResult:
    retriever_stub = retriever_pb2_grpc.RetrieverServiceStub(retriever)
    cases = sample_cases(split.test, users, seed)
    names = [f"eval-{case.user_id}" for case in cases]

    def replay(n: int) -> tuple[list[str], str, tuple[bool, bool]]:
        case, name = cases[n], names[n]
        delete_user(gateway, name, timeout_s)
        history = [split.item_ids[i] for i in case.history]
        events = history_events(name, history)
        for start in range(0, len(events), 1000):
            gateway.record_events(events[start : start + 1000], deadline=timeout_s)
        response = gateway.recommend(name, k=k, deadline=timeout_s)
        profile = retriever_stub.GetUserProfile(retriever_pb2.GetUserProfileRequest(user_id=name), timeout=timeout_s)
        query = retriever_pb2.SearchQuery(
            vector=profile.profile.vector, limit=candidate_pool, exclude_ids=list(dict.fromkeys(history))
        )
        pool = retriever_stub.SearchItems(retriever_pb2.SearchItemsRequest(queries=[query]), timeout=timeout_s)
        nearest = {item.item_id for item in pool.results[0].items}
        suggested = {item_id for item_id, _ in scorer.suggest(history[-history_for_ranking:], graph_candidates)}
        targets = [split.item_ids[t] for t in case.targets]
        in_pool = (any(t in nearest | suggested for t in targets), any(t in nearest for t in targets))
        delete_user(gateway, name, timeout_s)
        return [item.item_id for item in response.items], response.model_version, in_pool

    with ThreadPoolExecutor(workers) as executor:
        answers = list(tqdm(executor.map(replay, range(len(cases))), total=len(cases), desc="served", unit="user"))

    position = {item_id: n for n, item_id in enumerate(split.item_ids)}
    width = max(len(c.targets) for c in cases)
    ranks = torch.full((len(cases), width), torch.inf)
    for row, (case, (returned, _, _)) in enumerate(zip(cases, answers, strict=True)):
        order = {position[item_id]: rank for rank, item_id in enumerate(returned) if item_id in position}
        for column, target in enumerate(case.targets):
            ranks[row, column] = order.get(target, torch.inf)
    n_targets = torch.tensor([float(len(c.targets)) for c in cases])
    served = {name: float(values.mean()) for name, values in per_user_metrics(ranks, n_targets, KS).items()}
    offline = evaluate(CatalogScorer(scorer, split.item_ids, text), cases, mask=True, ks=KS)
    versions = {version for _, version, _ in answers}
    return ServedResult(
        users=len(cases),
        served=served,
        offline=offline,
        candidate_recall=sum(both for _, _, (both, _) in answers) / len(cases),
        candidate_recall_nearest=sum(nearest for _, _, (_, nearest) in answers) / len(cases),
        candidate_pool=candidate_pool,
        graph_candidates=graph_candidates,
        model_version=",".join(sorted(versions)),
    )
