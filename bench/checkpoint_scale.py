"""What a large catalog's checkpoint costs the ranker, without training one: a synthetic checkpoint of n items in
the real format (random transformer weights, ``--keep`` graph weights per item, the known items' float16 text)
written by the real save path (services/ranker/checkpoints.py ``save_checkpoint``), then loaded by the real loader
(``load_scorer``) in a fresh process, which reports its resident set before and after the load, its peak (VmHWM)
and a scoring call of 100 candidates, one of them unknown (the path that reads the known items' text; the best of
three calls).

The format's own bytes per item: 8 (row pointer) + 8 x keep (int32 target, float32 weight) + 2 x text_dim (float16
text) + 4 x dim (ID embedding), plus the item id (a Python string in the vocabulary and the scorer's index).

    nice -n 19 .venv/bin/python bench/checkpoint_scale.py --items 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, machine, machine_line, table, write_json
from services.ranker.checkpoints import save_checkpoint
from services.ranker.model import ItemGraph, ModelConfig, RankerModel
from services.ranker.training import TrainConfig, TrainResult

CHUNK = 65536  # rows generated at a time, so building the checkpoint holds little beyond the checkpoint itself

# Run in a fresh interpreter: a tiny checkpoint first (what any first load allocates, whatever the catalog), then
# RSS before and after load_scorer of the measured one, the peak, and one scoring call with an unknown candidate.
PROBE = """
import json, sys, time
from pathlib import Path
import numpy as np
from services.ranker.checkpoints import load_scorer

def rss():
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}

load_scorer(Path(sys.argv[1]))
before = rss()
started = time.perf_counter()
scorer, _ = load_scorer(Path(sys.argv[2]))
seconds = time.perf_counter() - started
after = rss()
vectors = np.random.default_rng(0).normal(size=(101, scorer.model.config.text_dim)).astype(np.float32)
history, candidates = list(scorer.item_ids[:10]), list(scorer.item_ids[10:100]) + ["new"]
timings = []
for _ in range(3):
    started = time.perf_counter()
    scorer.score(history, vectors[:10], candidates, vectors[10:])
    timings.append(time.perf_counter() - started)
print(json.dumps({"before": before["VmRSS"], "after": after["VmRSS"], "peak": after["VmHWM"],
                  "load_s": seconds, "score_s": min(timings)}))
"""


def format_bytes_per_item(keep: int, text_dim: int = 384, dim: int = TrainConfig().dim) -> int:
    """The checkpoint's arrays per item: graph row pointer and ``keep`` weights, float16 text, ID embedding."""
    return 8 + 8 * keep + 2 * text_dim + 4 * dim


def synthetic_result(n_items: int, keep: int, seed: int = 0, text_dim: int = 384) -> TrainResult:
    """A TrainResult of ``n_items`` items as training would hand it to save_checkpoint, with random weights:
    exactly ``keep`` distinct graph targets per item (never itself) and unit text vectors."""
    rng = np.random.default_rng(seed)
    config = TrainConfig()
    model_config = ModelConfig(
        n_items=n_items, text_dim=text_dim, dim=config.dim, layers=config.layers, heads=config.heads
    )
    state = RankerModel(model_config).state_dict()
    keep = min(keep, n_items - 1)
    offsets = np.sort(rng.choice(np.arange(1, n_items), size=keep, replace=False)).astype(np.int64)
    targets = np.empty(n_items * keep, dtype=np.int32)
    text = np.empty((n_items, text_dim), dtype=np.float16)
    for start in range(0, n_items, CHUNK):
        rows = np.arange(start, min(start + CHUNK, n_items), dtype=np.int64)
        targets[start * keep : (start + len(rows)) * keep] = ((rows[:, None] + offsets) % n_items + 1).ravel()
        block = rng.standard_normal((len(rows), text_dim), dtype=np.float32)
        text[rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    pointers = np.concatenate([[0], np.arange(n_items + 1, dtype=np.int64) * keep])  # row 0 (unknown) is empty
    values = (0.01 * rng.standard_normal(n_items * keep, dtype=np.float32)).astype(np.float32)
    return TrainResult(
        state_dict=state,
        model_config=model_config,
        item_ids=tuple(f"item{i}" for i in range(n_items)),
        config=config,
        metrics={},
        epochs=0,
        best_epoch=0,
        seconds=0.0,
        dataset_name=f"synthetic-checkpoint-{n_items}",
        dataset_hash="",
        n_users=0,
        graph=ItemGraph(pointers, targets, values, text),
    )


@dataclass
class LoadRun:
    items: int
    keep: int
    checkpoint_mb: float
    format_bytes_per_item: int
    load_rss_mb: float  # resident growth from before the load to after it
    peak_rss_mb: float  # the process's peak (VmHWM) during the load over its resident set before it
    load_seconds: float
    score_seconds: float

    @property
    def bytes_per_item(self) -> float:
        return self.load_rss_mb * 1e6 / self.items


def measure_load(n_items: int, keep: int, folder: Path) -> LoadRun:
    """Write the synthetic checkpoint (and a tiny one to warm up with) under ``folder`` and load it in a fresh
    interpreter."""
    warm = save_checkpoint(folder / "warm", synthetic_result(100, keep), embedding_model_id="synthetic")
    result = synthetic_result(n_items, keep)
    path = save_checkpoint(folder / "measured", result, embedding_model_id="synthetic")
    del result
    size_mb = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    command = [sys.executable, "-c", PROBE, str(warm), str(path)]
    probe = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    return LoadRun(
        items=n_items,
        keep=keep,
        checkpoint_mb=size_mb,
        format_bytes_per_item=format_bytes_per_item(keep),
        load_rss_mb=(found["after"] - found["before"]) / 1e6,
        peak_rss_mb=(found["peak"] - found["before"]) / 1e6,
        load_seconds=found["load_s"],
        score_seconds=found["score_s"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[100000, 1000000])
    parser.add_argument("--keep", type=int, nargs="+", default=[TrainConfig().graph_keep])
    parser.add_argument("--name", default="checkpoint_scale", help="docs/results/<name>.json")
    args = parser.parse_args()
    info = machine()
    runs: list[LoadRun] = []
    for n_items in args.items:
        for keep in args.keep:
            with tempfile.TemporaryDirectory() as folder:
                runs.append(measure_load(n_items, keep, Path(folder)))
            print(runs[-1], flush=True)
    print(machine_line(info))
    header = ["items", "keep", "checkpoint MB", "format B/item", "load MB", "B/item", "peak MB", "load s", "score s"]
    rows = [
        [
            r.items,
            r.keep,
            f"{r.checkpoint_mb:.0f}",
            r.format_bytes_per_item,
            f"{r.load_rss_mb:.0f}",
            f"{r.bytes_per_item:.0f}",
            f"{r.peak_rss_mb:.0f}",
            f"{r.load_seconds:.1f}",
            f"{r.score_seconds:.3f}",
        ]
        for r in runs
    ]
    print(table(header, rows))
    write_json(args.name, {"machine": info, "results": [{**vars(r), "bytes_per_item": r.bytes_per_item} for r in runs]})


if __name__ == "__main__":
    main()
