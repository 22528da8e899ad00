"""Ingestion: items/s through the gateway's UpsertItems (all five services as processes on this machine:
preprocessor -> embedding -> retriever) vs the embedding service's raw throughput on the same item texts, same
suite, same run, interleaved repeats. Each repeat writes the Amazon-Scientific catalog under fresh ids (so every
pass is a real write). Also each service's resident memory at the end.

    .venv/bin/python bench/ingestion.py                 # ~4 min here
    .venv/bin/python bench/ingestion.py --repeats 5 --concurrency 1 4
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import SCIENTIFIC, free_port, machine, machine_line, median, rss_mb, table, write_json


async def _drive(calls: list[Any], concurrency: int) -> float:
    """Runs the coroutine factories in `calls` with `concurrency` callers; returns the elapsed seconds."""
    queue = iter(calls)

    async def worker() -> None:
        for call in queue:
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def upsert_rate(address: str, items: list[Any], repeat_tag: str, concurrency: int, size: int) -> float:
    from dataclasses import replace

    from recsys_client import AsyncRecsysClient
    from services.cli.ingest import catalog_item

    batches = [
        [replace(catalog_item(item), item_id=f"{item.item_id}-{repeat_tag}") for item in items[start : start + size]]
        for start in range(0, len(items), size)
    ]
    async with AsyncRecsysClient(address, deadline=300) as client:
        calls = [lambda b=b: client.upsert_items(b) for b in batches]
        elapsed = await _drive(calls, concurrency)
    return len(items) / elapsed


async def embed_rate(address: str, texts: list[str], concurrency: int, size: int) -> float:
    import grpc

    from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        requests = [
            embedding_pb2.EmbedTextsRequest(texts=texts[s : s + size], packed=True) for s in range(0, len(texts), size)
        ]
        calls = [lambda r=r: stub.EmbedTexts(r, timeout=300) for r in requests]
        elapsed = await _drive(calls, concurrency)
    return len(texts) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SCIENTIFIC)
    parser.add_argument("--limit-items", type=int, default=None, help="first N items (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4])
    parser.add_argument("--request-items", type=int, default=128, help="items per UpsertItems / texts per EmbedTexts")
    parser.add_argument("--name", default="ingestion")
    args = parser.parse_args()

    from services.cli.suite import Suite
    from services.cli.training import item_texts
    from services.datasets.loaders import load_dataset

    info = machine()
    print(machine_line(info), flush=True)
    items = list(load_dataset(args.data, limit_items=args.limit_items).items)
    texts = item_texts(items)
    state = Path(tempfile.mkdtemp(prefix="bench-ingestion-"))
    base = free_port()
    while base > 64000:
        base = free_port()
    suite = Suite(base, state)
    rows: dict[str, list[float]] = {}
    memory: dict[str, float] = {}
    try:
        suite.start()
        # UpsertItems does not reach the ranker, which stays NOT_SERVING without a trained checkpoint (it still
        # listens, so the gateway connects to it).
        suite.wait_until_serving(names=("preprocessor", "embedding", "retriever", "gateway"))
        # Warm-up: a few hundred items through both paths.
        asyncio.run(upsert_rate(suite.address("gateway"), items[:256], "warm", 2, args.request_items))
        asyncio.run(embed_rate(suite.address("embedding"), texts[:256], 2, args.request_items))
        for repeat in range(args.repeats):
            for concurrency in args.concurrency:
                key_up = f"gateway UpsertItems, {concurrency} callers x {args.request_items} items"
                key_em = f"embedding EmbedTexts (raw), {concurrency} callers x {args.request_items} texts"
                tag = f"r{repeat}c{concurrency}"
                up = asyncio.run(upsert_rate(suite.address("gateway"), items, tag, concurrency, args.request_items))
                em = asyncio.run(embed_rate(suite.address("embedding"), texts, concurrency, args.request_items))
                rows.setdefault(key_up, []).append(up)
                rows.setdefault(key_em, []).append(em)
                print(
                    f"repeat {repeat}, {concurrency} callers: upsert {up:.0f} items/s, embed {em:.0f} texts/s",
                    flush=True,
                )
        memory = {name: rss_mb(process.pid) for name, process in suite.processes.items()}
    finally:
        codes = suite.stop()
        print(f"stopped: {codes}")
        shutil.rmtree(state, ignore_errors=True)

    out_rows = []
    for concurrency in args.concurrency:
        up = median(rows[f"gateway UpsertItems, {concurrency} callers x {args.request_items} items"])
        em = median(rows[f"embedding EmbedTexts (raw), {concurrency} callers x {args.request_items} texts"])
        out_rows.append([concurrency, args.request_items, up, em, up / em])
    print()
    print(machine_line(info))
    print(
        f"{len(items)} Amazon-Scientific items per pass, median of {args.repeats} interleaved repeats, "
        "all five services on this machine (recsys up's settings)"
    )
    print(table(["callers", "items per call", "UpsertItems items/s", "raw embedding texts/s", "ratio"], out_rows))
    print()
    print(table(["service", "RSS MB after the run"], [[k, v] for k, v in memory.items()]))
    path = write_json(
        args.name,
        {
            "machine": info,
            "settings": {**vars(args), "data": str(args.data)},
            "items": len(items),
            "runs": rows,
            "rows": out_rows,
            "rss_mb": memory,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
