"""Training cost as the catalog grows: time and peak memory of each stage of `recsys train` on synthetic catalogs
of 10k / 100k / 1M items (ten interactions per item), and the checkpoint's size and load.

The data: a seeded power-law item popularity (Zipf exponent ``--zipf``), items in clusters of about 100 (users
buy within one or two clusters), item texts from templates (cluster category, brand, adjective, noun, model
number), sequences in time order; ``--write DIR`` also writes it in the plain format for `recsys train --data DIR`.

Stages, each as `recsys train` runs it (services/ranker/training.py): the item embeddings (the suite's embedding
path and its cache), the item graph (validation search included), the transformer (``--epochs`` epochs; the
time per epoch is what scales), the fusion search, the checkpoint (written, then loaded as the ranker does).
Encoding costs the same per item at any catalog size, so by default it runs on ``--embed-sample`` items and its
time is scaled to the catalog (``--embed-all`` encodes every item); the later stages then take seeded vectors
with the catalog's cluster structure in place of the encoder's, since their cost does not depend on the values.
Peak memory is the process's resident set sampled every 20 ms during the stage (each stage starts from what the
stages before it left allocated); CPU seconds (the process's, all threads) beside wall seconds, since on a shared
machine the wall clock mostly measures the other tenants.

    nice -n 10 .venv/bin/python bench/training_scale.py --items 10000 100000
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, RESULTS, machine, machine_line, table, write_json
from services.cli.training import embed_items
from services.datasets.loaders import CatalogItem, Dataset, Interaction
from services.ranker.checkpoints import load_scorer, save_checkpoint
from services.ranker.graph import fit_graph_weights
from services.ranker.splits import Split, loo_split
from services.ranker.training import (
    TrainConfig,
    TrainResult,
    fit_sequence_model,
    graph_neighbours,
    served_graph,
    tune_fusion,
)

ADJECTIVES = ("compact", "heavy-duty", "precision", "digital", "portable", "stainless", "industrial", "lab-grade")
NOUNS = ("caliper", "pipette", "multimeter", "beaker", "soldering iron", "microscope", "scale", "thermometer")
DEPARTMENTS = ("Lab & Scientific", "Test & Measurement", "Electronics", "Tools", "Safety", "Power & Hand Tools")
PAGE = 4096


def synthetic_catalog(n_items: int, interactions_per_item: int = 10, zipf: float = 1.0, seed: int = 0) -> Dataset:
    """Items in clusters of about 100 with power-law popularity; each user buys within one or two clusters."""
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n_items // 100)
    cluster = rng.integers(0, n_clusters, n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf
    rng.shuffle(popularity)
    members = [np.flatnonzero(cluster == c) for c in range(n_clusters)]
    items = tuple(
        CatalogItem(
            item_id=f"item{i}",
            title=f"{ADJECTIVES[rng.integers(len(ADJECTIVES))]} {NOUNS[rng.integers(len(NOUNS))]} {i % 997}",
            categories=(DEPARTMENTS[cluster[i] % len(DEPARTMENTS)], f"group {cluster[i]}"),
            brand=f"brand {cluster[i] % 251}",
        )
        for i in range(n_items)
    )
    interactions: list[Interaction] = []
    total, user = n_items * interactions_per_item, 0
    while len(interactions) < total:
        length = int(min(50, 3 + rng.geometric(1 / 8)))
        pool = np.concatenate([members[c] for c in rng.integers(0, n_clusters, 1 + int(rng.random() < 0.3))])
        if not len(pool):
            continue
        weights = popularity[pool] / popularity[pool].sum()
        bought = rng.choice(pool, size=min(length, len(pool)), p=weights, replace=False)
        interactions.extend(Interaction(f"user{user}", f"item{i}", float(t)) for t, i in enumerate(bought))
        user += 1
    return Dataset(name=f"synthetic-{n_items}", items=items, interactions=tuple(interactions))


def write_plain(dataset: Dataset, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "items.jsonl").open("w", encoding="utf-8") as f:
        for item in dataset.items:
            record = {"item_id": item.item_id, "title": item.title, "categories": list(item.categories)}
            f.write(json.dumps({**record, "brand": item.brand}) + "\n")
    with (folder / "interactions.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "timestamp"])
        # The plain format's timestamps are integers (seconds); the generator's are whole numbers already.
        writer.writerows((it.user_id, it.item_id, int(it.timestamp)) for it in dataset.interactions)


def cluster_vectors(dataset: Dataset, seed: int = 0, dim: int = 384) -> np.ndarray:
    """Seeded unit vectors near a centre per item cluster (group category): the later stages' stand-in input."""
    rng = np.random.default_rng(seed)
    groups = [item.categories[-1] for item in dataset.items]
    names = {name: n for n, name in enumerate(dict.fromkeys(groups))}
    centres = rng.normal(size=(len(names), dim)).astype(np.float32)
    vectors = centres[[names[g] for g in groups]] + rng.normal(size=(len(groups), dim)).astype(np.float32)
    out: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return out


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the process's CPU time, all threads: steadier than wall time on a loaded machine
    peak_gb: float = 0.0
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)


@contextmanager
def measured(stages: list[Stage], name: str) -> Iterator[Stage]:
    """Times the block and samples the resident set every 20 ms while it runs."""
    stage = Stage(name)
    peak = [resident_bytes()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], resident_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        yield stage
    finally:
        stage.seconds = time.perf_counter() - started
        stage.cpu_seconds = time.process_time() - cpu_started
        done.set()
        sampler.join()
        stage.peak_gb = max(peak[0], resident_bytes()) / 1e9
        stages.append(stage)


@dataclass
class CatalogRun:
    items: int
    interactions: int
    users: int
    stages: list[Stage]


def run_catalog(n_items: int, args: argparse.Namespace, config: TrainConfig) -> CatalogRun:
    stages: list[Stage] = []
    with measured(stages, "synthetic data") as stage:
        dataset = synthetic_catalog(n_items, zipf=args.zipf, seed=args.seed)
        split: Split = loo_split(dataset)
        stage.note = f"{len(dataset.interactions)} interactions, {len(dataset.user_ids)} users"
    if args.write:
        write_plain(dataset, args.write / dataset.name)
    with measured(stages, "embedding items") as stage:
        cache = REPO / "var" / "cache"
        if args.embed_all or n_items <= args.embed_sample:
            vectors, _ = embed_items(dataset.items, cache)
            text = np.asarray(vectors, dtype=np.float32)
        else:
            with tempfile.TemporaryDirectory() as empty:  # the sample is encoded, never read back from a cache
                embed_items(dataset.items[: args.embed_sample], Path(empty))
    if not (args.embed_all or n_items <= args.embed_sample):
        measured_seconds = stage.seconds
        stage.seconds = measured_seconds * n_items / args.embed_sample
        stage.cpu_seconds = stage.cpu_seconds * n_items / args.embed_sample
        stage.note = f"{args.embed_sample} items encoded in {measured_seconds:.0f} s, scaled to {n_items}"
        text = cluster_vectors(dataset, args.seed)
    with measured(stages, "item graph") as stage:
        weights, choice = fit_graph_weights(
            split, text, neighbours=graph_neighbours(config, n_items), max_users=config.eval_users, seed=config.seed
        )
        stage.note = f"{weights.nnz} weights; lambda {choice.ease_lambda:g}, text k {choice.text_neighbours}"
    with measured(stages, "transformer") as stage:
        sequence = fit_sequence_model(split, text, config, use_text=True, progress=False)
    stages[-1].extra["seconds_per_epoch"] = stages[-1].seconds / max(sequence.epochs, 1)
    stages[-1].note = f"{sequence.epochs} epochs, {stages[-1].extra['seconds_per_epoch']:.0f} s each"
    with measured(stages, "fusion search") as stage:
        graph = served_graph(weights, split, sequence.item_ids, config, text)
        fusion = tune_fusion(
            sequence.scorer(config.device, graph=graph), split, text, mask=True, max_users=config.tune_users, seed=0
        ).fusion
    result = TrainResult(
        state_dict=sequence.state_dict,
        model_config=sequence.model_config,
        item_ids=sequence.item_ids,
        config=config,
        metrics={},
        epochs=sequence.epochs,
        best_epoch=sequence.best_epoch,
        seconds=sum(s.seconds for s in stages),
        dataset_name=dataset.name,
        dataset_hash="",
        n_users=len(dataset.user_ids),
        graph=graph,
        fusion=fusion,
        graph_choice=choice,
    )
    with tempfile.TemporaryDirectory() as folder, measured(stages, "checkpoint save + load") as stage:
        path = save_checkpoint(Path(folder), result, embedding_model_id="bench")
        size_mb = sum(f.stat().st_size for f in path.iterdir()) / 1e6
        before = resident_bytes()
        scorer, _ = load_scorer(path)
        stage.extra = {"checkpoint_mb": size_mb, "load_rss_gb": (resident_bytes() - before) / 1e9}
        stage.note = f"{size_mb:.0f} MB on disk, +{stage.extra['load_rss_gb']:.2f} GB resident to load"
        del scorer
    return CatalogRun(n_items, len(dataset.interactions), len(dataset.user_ids), stages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--epochs", type=int, default=2, help="transformer epochs per catalog (time per epoch)")
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embed-sample", type=int, default=1000)
    parser.add_argument("--embed-all", action="store_true", help="encode every item (slow on a CPU)")
    parser.add_argument("--write", type=Path, help="also write each catalog in the plain format under this folder")
    parser.add_argument("--name", default="training_scale", help="docs/results/<name>.json and .png")
    args = parser.parse_args()
    config = replace(TrainConfig(), max_epochs=args.epochs, patience=args.epochs)
    info = machine()
    results: list[CatalogRun] = []
    for n_items in args.items:
        results.append(run_catalog(n_items, args, config))
        for stage in results[-1].stages:
            print(n_items, stage, flush=True)
    rows = [
        [r.items, s.name, f"{s.seconds:.1f}", f"{s.cpu_seconds:.1f}", f"{s.peak_gb:.2f}", s.note]
        for r in results
        for s in r.stages
    ]
    print(machine_line(info))
    print(table(["items", "stage", "seconds", "CPU seconds", "peak GB", "note"], rows))
    write_json(args.name, {"machine": info, "config": config.to_dict(), "results": [asdict(r) for r in results]})
    plot(results, RESULTS / f"{args.name}.png")


def plot(results: list[CatalogRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [s.name for s in results[0].stages if s.name != "synthetic data"]
    items = [r.items for r in results]
    for name in names:
        stages = [next(s for s in r.stages if s.name == name) for r in results]
        left.plot(items, [s.cpu_seconds for s in stages], marker="o", label=name)
        right.plot(items, [s.peak_gb for s in stages], marker="o", label=name)
    for ax, label in ((left, "CPU seconds (all threads)"), (right, "peak resident GB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalog items (10 interactions each)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle("recsys train, per stage, as the catalog grows (shared 2-core machine)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
