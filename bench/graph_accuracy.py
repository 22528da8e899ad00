"""The scalable item graph against the exact one: the ranker's graph (EASE with text neighbours, picked on
validation) fitted by the dense n x n inverse and by the per-item neighbourhood solve, on Amazon-Scientific
(leave-one-out, the benchmark's split) and ml-100k (RecBole's recipe: ratings >= 3, 10-core, 8:1:1, seed 0, as
`recsys eval` runs it). Test NDCG@10 / Recall@10 of the graph alone, seen items masked, full ranking; fit time
(the whole validation search) and peak memory of the process.

    nice -n 10 .venv/bin/python bench/graph_accuracy.py --datasets amazon-scientific --neighbours 64 128 256
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, machine, machine_line, table, write_json
from services.cli.training import embed_items
from services.datasets.loaders import load_dataset
from services.evaluation.splits import filter_dataset, make_split
from services.ranker.graph import (
    TEXT_NEIGHBOURS,
    GraphChoice,
    GraphScorer,
    ease,
    fit_graph_weights,
    gram,
    nearest_by_text,
    neighbourhood_ease,
    neighbourhoods,
)
from services.ranker.scoring import evaluate, unseen_items
from services.ranker.splits import Split

DATA = REPO.parent / "shared" / "data"


RECIPES = {  # format, protocol, minimum rating, k-core
    "amazon-scientific": ("benchmark", "benchmark", None, 0),
    "ml-100k": ("recbole", "ratio", 3.0, 10),
}


def datasets(data: Path, names: Sequence[str]) -> Iterator[tuple[str, Split, np.ndarray]]:
    for name in names:
        fmt, protocol, rating, core = RECIPES[name]
        path = data / name
        dataset = load_dataset(path, fmt)
        if rating is not None or core:
            dataset = filter_dataset(dataset, rating, core)
        vectors, _ = embed_items(dataset.items, REPO / "var" / "cache")
        yield name, make_split(dataset, protocol, 0, path), np.asarray(vectors, dtype=np.float32)


def fixed_graph(
    split: Split, text: np.ndarray, neighbours: int | None, setting: tuple[float, int, float]
) -> tuple[sp.csr_matrix, GraphChoice]:
    """The graph at one (lambda, text neighbours, text weight), no search: the approximation alone."""
    lam, k, weight = setting
    g = gram(split.train, split.n_items)
    unit_count = float(g.diagonal().mean()) or 1.0
    nearest = nearest_by_text(text, max(TEXT_NEIGHBOURS))
    links = nearest.links(k)
    if neighbours is None:
        dense = ease(g.toarray() + weight * unit_count * links.toarray(), lam).numpy()
        weights = sp.csr_matrix(dense)
    else:
        hoods = neighbourhoods(g, nearest, neighbours)
        (weights,) = neighbourhood_ease(g, {k: links}, hoods, [(lam, k, weight * unit_count)])
    return weights, GraphChoice(lam, k, weight, float("nan"))


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--datasets", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--neighbours", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--name", default="graph_accuracy", help="docs/results/<name>.json")
    parser.add_argument(
        "--fixed",
        nargs=3,
        type=float,
        metavar=("LAMBDA", "TEXT_K", "TEXT_W"),
        help="compare at these settings only (no validation search): the approximation alone, ~20x cheaper",
    )
    args = parser.parse_args()
    info = machine()
    rows: list[list[str]] = []
    results = []
    for name, split, text in datasets(args.data, args.datasets):
        unknown = unseen_items(split.train, split.n_items)
        dense_ndcg = 0.0
        for neighbours in [None, *args.neighbours]:
            started = time.perf_counter()
            if args.fixed:
                lam, k, weight = args.fixed
                weights, choice = fixed_graph(split, text, neighbours, (lam, int(k), weight))
            else:
                weights, choice = fit_graph_weights(split, text, neighbours=neighbours)
            seconds = time.perf_counter() - started
            test = evaluate(GraphScorer(weights, unknown), split.test, mask=True, ks=(10,))
            if neighbours is None:
                dense_ndcg = test["ndcg@10"]
            method = "dense inverse" if neighbours is None else f"neighbourhood, {neighbours} co-occurring + text"
            ratio = test["ndcg@10"] / dense_ndcg if dense_ndcg else float("nan")
            chosen = f"{choice.ease_lambda:g} / {choice.text_neighbours} / {choice.text_weight:g}"
            scores = [f"{test['ndcg@10']:.4f}", f"{ratio:.3f}", f"{test['recall@10']:.4f}"]
            rows.append([name, method, *scores, chosen, f"{seconds:.1f}", f"{peak_gb():.2f}"])
            results.append(
                {
                    "dataset": name,
                    "neighbours": neighbours,
                    "test": test,
                    "ratio_to_dense_ndcg@10": ratio,
                    "choice": choice.to_dict(),
                    "fit_seconds": round(seconds, 2),
                    "peak_rss_gb_so_far": round(peak_gb(), 3),
                    "weights": int(weights.nnz),
                }
            )
            print(rows[-1], flush=True)
    headers = ["dataset", "graph", "NDCG@10", "x dense", "Recall@10", "lambda / text k / text w", "fit s", "peak GB"]
    print(machine_line(info))
    print(table(headers, rows))
    write_json(args.name, {"machine": info, "results": results})


if __name__ == "__main__":
    main()
