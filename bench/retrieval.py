"""Retrieval: recall@100 against exact numpy search and p50/p99 latency per query, the embedded engine
(qdrant-edge HNSW, built the way the retriever's index builder builds it) vs exact numpy, with and without a
payload filter, on embedding-like vectors (clustered, anisotropic, L2-normalised, 384 wide).

    .venv/bin/python bench/retrieval.py                       # 10k and 100k, HNSW grid, ~6 min here
    .venv/bin/python bench/retrieval.py --sizes 10000 100000 1000000 --budget-s 600

Each (size, m, ef_construct) builds one index; every search ef is measured on it. Latency is one query per
call from Python (what the retriever does per search), median over --repeats passes of the per-pass p50/p99.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine, machine_line, median, percentile, table, write_json

K = 100
CATEGORIES = 10  # filter on one of them: ~10% of the catalog


def embedding_like(n: int, dim: int, seed: int, clusters: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors shaped like sentence embeddings: a shared mean direction (anisotropy), cluster structure,
    a decaying spectrum. Returns the vectors and each one's cluster (which sets its category)."""
    rng = np.random.default_rng(1234)  # the same space for every size and for the queries
    spectrum = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    mean = rng.standard_normal(dim).astype(np.float32)
    mean *= 0.8 / np.linalg.norm(mean)
    centers = (rng.standard_normal((clusters, dim)).astype(np.float32) * spectrum) @ basis
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    draw = np.random.default_rng(seed)
    cluster = draw.integers(0, clusters, n)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        end = min(start + 100_000, n)
        noise = (draw.standard_normal((end - start, dim)).astype(np.float32) * spectrum) @ basis
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        block = mean + centers[cluster[start:end]] + 0.9 * noise
        out[start:end] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, cluster


def exact(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray | None) -> tuple[list[np.ndarray], list[float]]:
    """Exact top-K by numpy, one query at a time (timed), optionally restricted to rows where mask is True."""
    results, times = [], []
    subset = np.flatnonzero(mask) if mask is not None else None
    for q in queries:
        started = time.perf_counter()
        if subset is not None:
            scores = vectors[subset] @ q
            top = np.argpartition(-scores, K)[:K]
            ids = subset[top[np.argsort(-scores[top])]]
        else:
            scores = vectors @ q
            top = np.argpartition(-scores, K)[:K]
            ids = top[np.argsort(-scores[top])]
        times.append(time.perf_counter() - started)
        results.append(ids)
    return results, times


def build_shard(
    path: Path, vectors: np.ndarray, categories: np.ndarray, m: int, ef_construct: int
) -> tuple[Any, float]:
    from qdrant_edge import (
        Distance,
        EdgeConfig,
        EdgeOptimizersConfig,
        EdgeShard,
        EdgeVectorParams,
        HnswIndexConfig,
        PayloadSchemaType,
        Point,
        UpdateOperation,
    )

    config = EdgeConfig(
        vectors=EdgeVectorParams(size=vectors.shape[1], distance=Distance.Cosine),
        hnsw_config=HnswIndexConfig(m=m, ef_construct=ef_construct, full_scan_threshold=10_000),
        optimizers=EdgeOptimizersConfig(indexing_threshold=1),
    )
    shard = EdgeShard.create(str(path), config)
    # The payload index exists before the graph is built, as in the retriever (filter-aware HNSW links).
    shard.update(UpdateOperation.create_field_index("category", PayloadSchemaType.Keyword))
    for start in range(0, len(vectors), 2000):
        points = [
            Point(int(i) + 1, vectors[i].tolist(), {"category": f"c{categories[i]}"})
            for i in range(start, min(start + 2000, len(vectors)))
        ]
        shard.update(UpdateOperation.upsert_points(points))
    started = time.monotonic()
    shard.optimize()
    return shard, time.monotonic() - started


def engine_search(
    shard: Any, queries: np.ndarray, category: str | None, ef: int | None
) -> tuple[list[np.ndarray], list[float]]:
    from qdrant_edge import FieldCondition, Filter, MatchValue, Query, QueryRequest, SearchParams

    flt = Filter(must=[FieldCondition(key="category", match=MatchValue(category))]) if category else None
    params = SearchParams(hnsw_ef=ef) if ef else None
    results, times = [], []
    for q in queries:
        request = QueryRequest(limit=K, query=Query.Nearest(q.tolist()), filter=flt, params=params, with_payload=False)
        started = time.perf_counter()
        points = shard.query(request)
        times.append(time.perf_counter() - started)
        results.append(np.array([int(p.id) - 1 for p in points]))
    return results, times


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid", nargs="+", default=["16:100", "16:200", "32:200"], help="m:ef_construct")
    parser.add_argument("--ef", type=int, nargs="+", default=[0, 128, 200, 300], help="search ef; 0 = default")
    parser.add_argument("--budget-s", type=float, default=1800, help="stop starting new builds after this")
    parser.add_argument("--name", default="retrieval")
    args = parser.parse_args()

    info = machine()
    print(machine_line(info), flush=True)
    started_all = time.monotonic()
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for n in args.sizes:
        vectors, clusters = embedding_like(n, args.dim, seed=n)
        categories = clusters % CATEGORIES
        queries, _ = embedding_like(args.queries, args.dim, seed=7)
        mask = categories == 3
        for filtered in (False, True):
            p50s, p99s = [], []
            for _ in range(args.repeats):
                _, times = exact(vectors, queries, mask if filtered else None)
                p50s.append(percentile(times, 50) * 1000)
                p99s.append(percentile(times, 99) * 1000)
            row = {
                "n": n,
                "engine": "numpy exact",
                "m": "",
                "ef_construct": "",
                "ef": "",
                "filter": filtered,
                "recall": 1.0,
                "p50_ms": median(p50s),
                "p99_ms": median(p99s),
                "build_s": 0.0,
            }
            rows.append(row)
            print(row, flush=True)
        truths = {False: exact(vectors, queries, None)[0], True: exact(vectors, queries, mask)[0]}
        for cell in args.grid:
            if time.monotonic() - started_all > args.budget_s:
                skipped.append(f"n={n} m:efc={cell}")
                print(f"budget spent: skipping n={n} {cell}", flush=True)
                continue
            m, ef_construct = (int(v) for v in cell.split(":"))
            folder = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
            try:
                shard, build_s = build_shard(folder / "shard", vectors, categories, m, ef_construct)
                print(f"n={n} m={m} ef_construct={ef_construct}: optimize {build_s:.1f} s", flush=True)
                for ef in args.ef:
                    for filtered in (False, True):
                        category = "c3" if filtered else None
                        found, _ = engine_search(shard, queries, category, ef or None)
                        p50s, p99s = [], []
                        for _ in range(args.repeats):
                            _, times = engine_search(shard, queries, category, ef or None)
                            p50s.append(percentile(times, 50) * 1000)
                            p99s.append(percentile(times, 99) * 1000)
                        row = {
                            "n": n,
                            "engine": "qdrant-edge HNSW",
                            "m": m,
                            "ef_construct": ef_construct,
                            "ef": ef or "default",
                            "filter": filtered,
                            "recall": recall(found, truths[filtered]),
                            "p50_ms": median(p50s),
                            "p99_ms": median(p99s),
                            "build_s": build_s,
                        }
                        rows.append(row)
                        print(row, flush=True)
                shard.close()
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        del vectors

    headers = [
        "vectors",
        "engine",
        "m",
        "ef_construct",
        "search ef",
        "filter",
        "recall@100",
        "p50 ms",
        "p99 ms",
        "build s",
    ]
    print()
    print(machine_line(info))
    print(
        f"{args.dim}-d embedding-like vectors, top-{K}, {args.queries} queries x {args.repeats} passes "
        f"(median of per-pass p50/p99); filter: one of {CATEGORIES} keyword values (~10%), indexed"
    )
    print(
        table(
            headers,
            [
                [
                    r["n"],
                    r["engine"],
                    r["m"],
                    r["ef_construct"],
                    r["ef"],
                    "yes" if r["filter"] else "no",
                    r["recall"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["build_s"],
                ]
                for r in rows
            ],
        )
    )
    if skipped:
        print(f"not run (time budget {args.budget_s:.0f} s spent): {', '.join(skipped)}")
    path = write_json(args.name, {"machine": info, "settings": vars(args), "rows": rows, "skipped": skipped})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
