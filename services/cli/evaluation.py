"""`recsys eval`: the offline comparison of every model, or the served evaluation through a running gateway."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from recsys_client import RecsysClient
from services.cli.training import adapt_encoder, embed_items, item_texts
from services.datasets.loaders import Dataset, detect_format, load_dataset
from services.embedding.app import load_encoder
from services.embedding.config import EmbeddingSettings
from services.embedding.encoder import resolve_device
from services.evaluation.queries import ROWS, query_evaluation
from services.evaluation.report import plot, table, write_json
from services.evaluation.runner import Adapter, run_evaluation
from services.evaluation.served import served_evaluation
from services.evaluation.splits import filter_dataset, make_split
from services.gateway.config import GatewaySettings
from services.ranker.checkpoints import latest_checkpoint, load_scorer
from services.ranker.encoder_tuning import TuningConfig
from services.ranker.splits import Split
from services.ranker.training import TrainConfig

MASKS = {"both": (True, False), "masked": (True,), "unmasked": (False,)}


def _load(args: argparse.Namespace) -> tuple[Dataset, str]:
    path: Path = args.data
    if not path.is_dir():
        raise SystemExit(f"no dataset at {path}: pass --data FOLDER (benchmark, RecBole or plain format)")
    fmt = detect_format(path) if args.format == "auto" else args.format
    dataset = load_dataset(path, fmt, limit_items=args.limit_items)
    if args.min_rating is not None or args.core:
        dataset = filter_dataset(dataset, args.min_rating, args.core)
    # The benchmark ships its split (a cut catalog no longer matches it: leave-one-out then); the other formats
    # take the protocol asked for.
    return dataset, "benchmark" if fmt == "benchmark" and args.limit_items is None else args.protocol


def run_eval_command(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    dataset, protocol = _load(args)
    vectors, model_id = embed_items(dataset.items, args.state_dir / "cache")
    text = np.asarray(vectors, dtype=np.float32)  # row i belongs to dataset.items[i], the split's catalog order
    split = make_split(dataset, protocol, args.seed, args.data)
    data_hash = dataset.content_hash()
    print(
        f"dataset {dataset.name}: {len(dataset.items)} items, {len(dataset.interactions)} interactions, "
        f"{len(split.test)} test users; protocol {protocol}; seed {args.seed}; data hash {data_hash[:16]}"
    )
    if args.queries:
        if not args.through_gateway:
            raise SystemExit("--queries asks a running suite: give --through-gateway ADDRESS (recsys up prints it)")
        _queries(args, dataset, split, text)
        return
    if args.through_gateway:
        _served(args, split, text, data_hash)
        return
    config = TrainConfig(max_epochs=args.epochs, seed=args.seed, max_seconds=args.max_train_seconds)
    tuning = TuningConfig(seed=args.seed, device=resolve_device("auto")) if args.adapt_encoder else None
    result = run_evaluation(
        split,
        text,
        masks=MASKS[args.mask],
        seed=args.seed,
        data_hash=data_hash,
        train_config=config,
        with_cold_start=not args.no_cold_start,
        adapter=_adapter(dataset, tuning) if tuning is not None else None,
    )
    total = time.perf_counter() - started
    print()
    print(table(result))
    print("seconds per model (fit, tuning on validation, scoring; both maskings):")
    print("  " + ", ".join(f"{name} {value:.0f}" for name, value in result.seconds.items()))
    print(f"whole run (loading, embeddings, every model): {total:.0f} s")
    run_config = {
        "data": str(args.data),
        "dataset": dataset.name,
        "protocol": protocol,
        "masks": list(MASKS[args.mask]),
        "min_rating": args.min_rating,
        "core": args.core,
        "seed": args.seed,
        "data_hash": data_hash,
        "embedding_model": model_id,
        "train_config": config.to_dict(),
        "tuning_config": tuning.to_dict() if tuning is not None else None,
        "total_seconds": round(total, 1),
    }
    if args.json is not None:
        write_json(result, args.json, run_config)
        print(f"rows written to {args.json}")
    if args.plot is not None:
        plot(result, args.plot, title=f"{dataset.name} ({protocol}, seed {args.seed})")
        print(f"plot written to {args.plot}")


def _adapter(dataset: Dataset, tuning: TuningConfig) -> Adapter:
    """Adapts the encoder to a split's training data; the catalog's vectors from it as the service serves them."""
    texts = item_texts(dataset.items)

    def adapt(split: Split) -> tuple[np.ndarray, dict[str, Any]]:
        tuned, vectors = adapt_encoder(split, texts, tuning)
        return vectors, tuned.summary()

    return adapt


def _served(args: argparse.Namespace, split: Split, text: np.ndarray, data_hash: str) -> None:
    path = latest_checkpoint(args.state_dir / "checkpoints")
    if path is None:
        raise SystemExit(f"no checkpoint under {args.state_dir / 'checkpoints'}: run `recsys train` first")
    scorer, metadata = load_scorer(path)
    if metadata.dataset_hash != data_hash:
        raise SystemExit(
            f"the served checkpoint {metadata.version} was trained on other data (hash {metadata.dataset_hash[:16]}, "
            f"this data {data_hash[:16]}): train on this data with `recsys train` first"
        )
    gateway_address: str = args.through_gateway
    host, _, port = gateway_address.rpartition(":")
    retriever_address = args.retriever or f"{host}:{int(port) + 3}"
    gateway_settings = GatewaySettings()  # the served gateway's settings, from the same environment
    with RecsysClient(gateway_address) as gateway, grpc.insecure_channel(retriever_address) as retriever:
        result = served_evaluation(
            gateway,
            retriever,
            split,
            text,
            scorer,
            users=args.users,
            seed=args.seed,
            candidate_pool=gateway_settings.candidate_pool,
            graph_candidates=gateway_settings.graph_candidates,
            history_for_ranking=gateway_settings.history_for_ranking,
        )
    print(f"served model {result.model_version}, checkpoint {metadata.version}, {result.users} users, seen masked")
    print("| metric | served | offline (same users, full ranking) | relative gap |")
    print("|---|---|---|---|")
    for metric in ("ndcg@10", "recall@10", "mrr@10", "ndcg@20", "recall@20", "ndcg@50", "recall@50"):
        print(
            f"| {metric} | {result.served[metric]:.4f} | {result.offline[metric]:.4f} | "
            f"{100 * result.relative_gap(metric):+.1f}% |"
        )
    print(
        f"candidate recall: {result.candidate_recall:.4f} with the {result.candidate_pool} nearest items and "
        f"{result.graph_candidates} item-graph candidates; {result.candidate_recall_nearest:.4f} nearest alone"
    )
    within = all(abs(result.relative_gap(m)) <= 0.05 for m in ("ndcg@10", "recall@10"))
    print("served agrees with offline within 5%" if within else "served and offline differ by more than 5%")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "checkpoint": metadata.version,
            "users": result.users,
            "seed": args.seed,
            "data_hash": data_hash,
            "candidate_pool": result.candidate_pool,
            "candidate_recall": result.candidate_recall,
            "candidate_recall_nearest": result.candidate_recall_nearest,
            "graph_candidates": result.graph_candidates,
            "served": result.served,
            "offline": result.offline,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _queries(args: argparse.Namespace, dataset: Dataset, split: Split, text: np.ndarray) -> None:
    cases = split.val if args.validation_users else split.test
    encoder = load_encoder(EmbeddingSettings())  # the model that embedded `text`: query and items alike

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.stack([encoded.vector for encoded in encoder.encode(texts)])

    with RecsysClient(args.through_gateway) as gateway:
        result = query_evaluation(
            gateway, embed, split, dataset.items, text, cases=cases, users=args.users, seed=args.seed
        )
    who = "validation" if args.validation_users else "test"
    kinds = ", ".join(f"{n} from the {kind}" for kind, n in result.kinds.items())
    print(f"personalised search: {result.users} {who} users ({kinds}); served model {result.model_version or 'none'}")
    print("| row | recall@10 | ndcg@10 | query fidelity |")
    print("|---|---|---|---|")
    for row in ROWS:
        values = result.metrics[row]
        print(f"| {row} | {values['recall@10']:.4f} | {values['ndcg@10']:.4f} | {values['query_fidelity']:.3f} |")
    print(
        f"reasons naming an item: {result.reasons_named}; {100 * result.reasons_strong:.1f}% of them name an item in "
        f"the top 5% of the catalog's pairwise cosines (cosine >= {result.strong_cosine:.3f})"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {"dataset": dataset.name, "seed": args.seed, "cases": who, **result.to_dict()}
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"rows written to {args.json}")
