"""Embedding on a GPU (H100/H200 class), one short run (< 5 min), one table naming the card:

1. our gRPC embedding service on CUDA (fp16, token-budgeted batches, tokeniser threads), concurrent clients
   in several processes;
2. sentence-transformers `encode` in process at each batch size in --st-batches (its best is the reference);
3. the forward-pass-only ceiling: the same model in fp16 on pre-tokenised, length-bucketed batches already on
   the GPU (no tokenisation, no copies, no pooling): what the card can do.

Texts: Amazon-Scientific item texts repeated to --texts (32k). Needs the venv with a CUDA build of torch
(`pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128` before `make`); on a GPU machine
without a network, `bench/gpu_kit.py` packs the rest and `bench/gpu_run.sh` runs this there.

    .venv/bin/python bench/gpu_embedding.py                                                # on the GPU machine
    .venv/bin/python bench/gpu_embedding.py --device cpu --limit 300 --texts 600 --repeats 1  # smoke test (~1 min)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, SCIENTIFIC, item_texts, machine, median, service_process, table, write_json

# Response encodings of EmbedTexts: one float32 matrix (`packed`, what programs ask for) or each vector's floats.
ENCODINGS = {"packed": "packed float32 matrix", "values": "per-text float lists"}


def _client_process(
    port: int, texts: list[str], concurrency: int, size: int, packed: bool, start_at: float, out: Any
) -> None:
    """One client process: `concurrency` callers over its share of texts; sends (texts, seconds, sample)."""
    import grpc

    from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc

    async def run() -> tuple[float, np.ndarray]:
        requests = [
            embedding_pb2.EmbedTextsRequest(texts=texts[s : s + size], packed=packed)
            for s in range(0, len(texts), size)
        ]
        sample = np.empty((0, 0), dtype=np.float32)
        options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            await stub.EmbedTexts(requests[0], timeout=120)  # connect and warm
            queue = iter(enumerate(requests))

            async def worker() -> None:
                nonlocal sample
                for index, request in queue:
                    response = await stub.EmbedTexts(request, timeout=300)
                    if index == 0 and packed:
                        sample = np.frombuffer(response.vectors_f32, dtype="<f4").reshape(len(request.texts), -1)
                    elif index == 0:
                        sample = np.asarray([e.values for e in response.embeddings], dtype=np.float32)

            await asyncio.sleep(max(0.0, start_at - time.time()))  # all client processes start together
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started, sample

    elapsed, sample = asyncio.run(run())
    out.send((len(texts), elapsed, sample))
    out.close()


def served_rate(
    port: int, texts: list[str], procs: int, concurrency: int, size: int, packed: bool
) -> tuple[float, np.ndarray]:
    context = multiprocessing.get_context("spawn")
    share = (len(texts) + procs - 1) // procs
    start_at = time.time() + 3.0
    pipes, workers = [], []
    for p in range(procs):
        receive, send = context.Pipe(duplex=False)
        worker = context.Process(
            target=_client_process,
            args=(port, texts[p * share : (p + 1) * share], concurrency, size, packed, start_at, send),
        )
        worker.start()
        pipes.append(receive)
        workers.append(worker)
    results = [pipe.recv() for pipe in pipes]
    for worker in workers:
        worker.join()
    total = sum(r[0] for r in results)
    elapsed = max(r[1] for r in results)
    sample: np.ndarray = results[0][2]
    return total / elapsed, sample


def forward_ceiling(path: Path, texts: list[str], device: str, batch: int, repeats: int) -> float:
    """items/s of the model's forward pass alone (fp16 on CUDA, fp32 on CPU) over length-bucketed batches."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype).eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    ids = tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = []
    for start in range(0, len(order), batch):
        rows = [ids[i] for i in order[start : start + batch]]
        width = max(len(r) for r in rows)
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for n, r in enumerate(rows):
            input_ids[n, : len(r)] = torch.tensor(r)
            mask[n, : len(r)] = 1
        batches.append((input_ids.to(device), mask.to(device)))

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    rates = []
    with torch.inference_mode():
        for b in batches[:2]:
            model(input_ids=b[0], attention_mask=b[1])
        sync()
        for _ in range(repeats):
            started = time.perf_counter()
            for input_ids, mask in batches:
                model(input_ids=input_ids, attention_mask=mask)
            sync()
            rates.append(len(texts) / (time.perf_counter() - started))
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the installed one)")
    parser.add_argument("--data", type=Path, default=SCIENTIFIC, help="dataset folder of the item texts")
    parser.add_argument("--texts-file", type=Path, default=None, help="the item texts as a JSON list instead")
    parser.add_argument("--limit", type=int, default=None, help="distinct catalog texts (default: all)")
    parser.add_argument("--texts", type=int, default=32_768, help="texts per pass (catalog repeated)")
    parser.add_argument("--st-batches", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--ceiling-batch", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8, help="concurrent callers per client process")
    parser.add_argument("--request-texts", type=int, default=512)
    parser.add_argument(
        "--encodings",
        nargs="+",
        choices=ENCODINGS,
        default=list(ENCODINGS),
        help="response encodings to measure; the first is the one the goals are checked on",
    )
    parser.add_argument("--service-batch", type=int, default=2048, help="EMBEDDING_MAX_BATCH_SIZE")
    parser.add_argument("--service-tokens", type=int, default=131_072, help="EMBEDDING_MAX_BATCH_TOKENS")
    parser.add_argument("--tokenizer-threads", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--name", default="gpu_embedding")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from services.embedding.encoder import default_model_path

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --limit 300 --texts 600 --repeats 1 for a smoke test")
    card = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else machine()["cpu"]
    model_path = args.model or default_model_path()
    base = json.loads(args.texts_file.read_text()) if args.texts_file else item_texts(args.data)
    base = base[: args.limit] if args.limit else base
    texts = [base[i % len(base)] for i in range(args.texts)]
    info = {**machine(), "card": card, "torch": torch.__version__}
    print(
        f"device: {card}; host: {info['cpu']}, {info['cores']} cores; torch {torch.__version__}; "
        f"{len(texts)} texts ({len(base)} distinct Amazon-Scientific item texts)",
        flush=True,
    )
    started_all = time.monotonic()

    rows: list[list[Any]] = []
    ceiling = forward_ceiling(model_path, texts, args.device, args.ceiling_batch, args.repeats)
    print(f"forward-only ceiling: {ceiling:.0f} items/s", flush=True)

    # float32 whatever the stored weights (the kit's are float16): the reference the issue names.
    model = SentenceTransformer(str(model_path), device=args.device).float()
    reference = model.encode(base, batch_size=256, normalize_embeddings=True)
    st_rates: dict[int, float] = {}
    for batch in args.st_batches:
        model.encode(texts[: batch * 2], batch_size=batch)
        st_runs = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            model.encode(texts, batch_size=batch, normalize_embeddings=True)
            st_runs.append(len(texts) / (time.perf_counter() - started))
        st_rates[batch] = median(st_runs)
        print(f"sentence-transformers encode batch {batch}: {st_rates[batch]:.0f} items/s", flush=True)
    best_batch = max(st_rates, key=lambda b: st_rates[b])
    best_st = st_rates[best_batch]
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()

    env = {
        "EMBEDDING_DEVICE": args.device,
        "EMBEDDING_MODEL_PATH": str(model_path),
        "EMBEDDING_MAX_BATCH_SIZE": str(args.service_batch),
        "EMBEDDING_MAX_BATCH_TOKENS": str(args.service_tokens),
        "EMBEDDING_TOKENIZER_THREADS": str(args.tokenizer_threads),
        "EMBEDDING_MAX_TEXTS_PER_REQUEST": str(max(1024, args.request_texts)),
        "EMBEDDING_MAX_QUEUED_TEXTS": str(4 * args.texts),
        "EMBEDDING_MAX_MESSAGE_MB": "256",
    }
    with service_process("embedding", env, REPO / "var" / "bench" / "embedding-gpu.log", timeout_s=300) as port:
        served_rate(port, texts[: min(len(texts), 4096)], 1, 4, args.request_texts, True)  # warm-up
        rates: dict[str, list[float]] = {encoding: [] for encoding in args.encodings}
        cosines: dict[str, list[float]] = {encoding: [] for encoding in args.encodings}
        for _ in range(args.repeats):
            for encoding in args.encodings:  # interleaved, so a slow spell hits both
                packed = encoding == "packed"
                rate, sample = served_rate(port, texts, args.client_procs, args.clients, args.request_texts, packed)
                rates[encoding].append(rate)
                expected = reference[[i % len(base) for i in range(len(sample))]]
                cosines[encoding].append(float((sample * expected).sum(axis=1).min()))
        served_by = {encoding: median(r) for encoding, r in rates.items()}
    for encoding, rate in served_by.items():
        print(f"gRPC service, {ENCODINGS[encoding]}: {rate:.0f} items/s", flush=True)
    served = served_by[args.encodings[0]]

    rows.append(
        [
            "forward pass only, fp16, length-bucketed" if args.device != "cpu" else "forward pass only, fp32",
            f"batch {args.ceiling_batch}",
            ceiling,
            ceiling / best_st,
            1.0,
            "",
        ]
    )
    for batch, rate in st_rates.items():
        rows.append(
            [
                f"sentence-transformers encode (fp32){' best' if batch == best_batch else ''}",
                f"batch {batch}",
                rate,
                rate / best_st,
                rate / ceiling,
                "",
            ]
        )
    for encoding, rate in served_by.items():
        rows.append(
            [
                f"our gRPC service, {ENCODINGS[encoding]} ({args.client_procs} client procs x {args.clients} "
                f"callers x {args.request_texts} texts)",
                f"batch <= {args.service_batch}",
                rate,
                rate / best_st,
                rate / ceiling,
                f"{min(cosines[encoding]):.6f}",
            ]
        )
    print()
    print(
        f"device: {card}; host: {info['cpu']}, {info['cores']} cores; torch {torch.__version__}; {len(texts)} "
        f"Amazon-Scientific item texts; median of {args.repeats}; whole run {time.monotonic() - started_all:.0f} s"
    )
    print(table(["path", "batch", "items/s", "x ST best", "of ceiling", "min cosine to fp32"], rows))
    goals = f"goals: >= 5x ST best ({served / best_st:.2f}x), >= 50% of ceiling ({served / ceiling:.0%})"
    print(goals)
    path = write_json(
        args.name,
        {
            "machine": info,
            "settings": vars(args),
            "ceiling": ceiling,
            "st": st_rates,
            "served": served_by,
            "served_runs": rates,
            "min_cosine": {encoding: min(c) for encoding, c in cosines.items()},
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
