"""The ranker's scoring cost per call, in process: one user and eight users in one call, with 100 and 1,000
candidates, on a trained checkpoint; beside it, what the item-graph term would cost as one sparse product over
the whole graph (how the ranker computed it before: ~95% of a call's time on this CPU).

    .venv/bin/python bench/ranker_scoring.py --checkpoints var/bench/recommend/checkpoints
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine, machine_line, median, table, write_json
from services.ranker.checkpoints import latest_checkpoint, load_scorer
from services.ranker.model import UNKNOWN_ID, ItemGraph, ScoreRequest, recency_weights


def whole_graph_product(graph: ItemGraph, histories: list[np.ndarray]) -> torch.Tensor:
    """The graph scores as one sparse-dense product over the whole graph (the earlier implementation)."""
    weights = np.zeros((len(histories), graph.transposed.shape[0]), dtype=np.float32)
    for row, history in enumerate(histories):
        np.maximum.at(weights[row], history, recency_weights(len(history), 1.0))
    weights[:, UNKNOWN_ID] = 0.0
    product: torch.Tensor = torch.sparse.mm(graph.transposed, torch.from_numpy(weights).T).T
    return product


def timed_ms(function: object, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()  # type: ignore[operator]
        samples.append((time.perf_counter() - started) * 1000)
    return median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=Path("var/bench/recommend/checkpoints"))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the suite runs the ranker on 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = latest_checkpoint(args.checkpoints)
    if path is None:
        raise SystemExit(f"no checkpoint under {args.checkpoints}: run bench/recommend.py or `recsys train` first")
    scorer, metadata = load_scorer(path)
    known = [item_id for item_id in scorer._index if item_id]
    rng = np.random.default_rng(0)

    def request(candidates: int) -> ScoreRequest:
        history = list(rng.choice(known, 5, replace=False))
        chosen = list(rng.choice(known, min(candidates, len(known)), replace=False))
        return ScoreRequest(
            history,
            rng.normal(size=(len(history), 384)).astype(np.float32),
            chosen,
            rng.normal(size=(len(chosen), 384)).astype(np.float32),
        )

    rows = []
    for candidates in (100, 1000):
        for users in (1, 8):
            requests = [request(candidates) for _ in range(users)]
            scorer.score_many(requests)
            call = timed_ms(lambda requests=requests: scorer.score_many(requests), args.repeats)
            histories = [scorer._lookup(r.history_item_ids) for r in requests]
            assert scorer.graph is not None
            graph = scorer.graph
            rows_only = timed_ms(lambda g=graph, h=histories: g.scores(h), args.repeats)
            whole = timed_ms(lambda g=graph, h=histories: whole_graph_product(g, h), args.repeats)
            rows.append([candidates, users, call, call / users, rows_only, whole])
    info = machine()
    print(machine_line(info))
    print(
        f"checkpoint {metadata.version}, {len(known)} known items, torch threads {args.threads}; "
        f"medians of {args.repeats}\n"
    )
    headers = [
        "candidates",
        "users per call",
        "call ms",
        "ms per user",
        "graph: history rows ms",
        "graph: whole product ms",
    ]
    print(table(headers, rows))
    keys = ["candidates", "users", "call_ms", "per_user_ms", "graph_rows_ms", "graph_whole_ms"]
    write_json(
        "ranker_scoring",
        {"machine": info, "checkpoint": metadata.version, "rows": [dict(zip(keys, r, strict=True)) for r in rows]},
    )


if __name__ == "__main__":
    main()
