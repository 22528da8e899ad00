"""Data-parallel training: two CPU processes (gloo, as torchrun would start them) reach the same model quality
as one process, and their weights stay identical."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from services.datasets.loaders import CatalogItem, Dataset, Interaction
from services.ranker.scoring import evaluate
from services.ranker.splits import loo_split
from services.ranker.training import CatalogScorer, TrainConfig, fit_sequence_model

CONFIG = TrainConfig(dim=32, layers=1, heads=1, max_len=10, max_epochs=6, patience=6, batch_size=32, seed=5)


def _dataset() -> Dataset:
    """Users walk through consecutive items, so the next item is learnable."""
    rng = np.random.default_rng(2)
    items = tuple(CatalogItem(item_id=f"i{n}", title=f"item {n}") for n in range(50))
    interactions = []
    for u in range(120):
        start = int(rng.integers(0, 42))
        for t in range(int(rng.integers(4, 8))):
            interactions.append(Interaction(user_id=f"u{u:03d}", item_id=f"i{start + t}", timestamp=float(t)))
    return Dataset(name="walks", items=items, interactions=tuple(interactions))


def _train() -> tuple[float, dict[str, torch.Tensor]]:
    split = loo_split(_dataset())
    text = np.random.default_rng(0).normal(size=(split.n_items, 384)).astype(np.float32)
    fit = fit_sequence_model(split, text, CONFIG, use_text=True, progress=False)
    scorer = fit.scorer("cpu")
    ndcg = evaluate(CatalogScorer(scorer, split.item_ids, text), split.val, mask=True, ks=(10,))["ndcg@10"]
    return ndcg, fit.state_dict


def _worker(rank: int, size: int, store: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    try:
        ndcg, state = _train()
        checksum = float(sum(t.double().sum() for t in state.values()))
        Path(f"{out}.{rank}").write_text(json.dumps({"ndcg": ndcg, "checksum": checksum}))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    alone, _ = _train()
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    ranks = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(2)]
    assert ranks[0]["checksum"] == ranks[1]["checksum"], "the processes' weights drifted apart"
    together = ranks[0]["ndcg"]
    assert alone > 0.2, "the single-process model learned the walks"
    assert abs(together - alone) <= 0.1 * alone, (alone, together)
