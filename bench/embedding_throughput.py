"""Embedding throughput through gRPC vs sentence-transformers `encode` in process, on Amazon-Scientific item
texts, same machine, same run: the service is started as a subprocess (default settings, and fp32 for
reference), C concurrent grpc.aio clients send requests of R texts (packed responses, as the gateway asks);
sentence-transformers encodes the same texts in this process while the services sit idle. Repeats are
interleaved and the table shows medians. Also: latency of one text per call, the served vectors' cosine to fp32
(sentence-transformers), and the services' memory.

    .venv/bin/python bench/embedding_throughput.py                    # ~4 min here
    .venv/bin/python bench/embedding_throughput.py --texts 4000 --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    REPO,
    item_texts,
    machine,
    machine_line,
    median,
    percentile,
    rss_mb,
    service_process,
    table,
    write_json,
)


async def grpc_throughput(port: int, texts: list[str], concurrency: int, request_size: int) -> tuple[float, np.ndarray]:
    """texts/s with `concurrency` callers each sending the next `request_size` texts; returns the vectors too."""
    import grpc

    from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc

    chunks = [(start, texts[start : start + request_size]) for start in range(0, len(texts), request_size)]
    vectors = np.zeros((len(texts), 384), dtype=np.float32)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        queue = iter(chunks)

        async def worker() -> None:
            for start, chunk in queue:
                request = embedding_pb2.EmbedTextsRequest(texts=chunk, packed=True)
                response = await stub.EmbedTexts(request, timeout=120)
                rows = np.frombuffer(response.vectors_f32, dtype="<f4").reshape(len(chunk), -1)
                vectors[start : start + len(chunk)] = rows

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(texts) / elapsed, vectors


async def grpc_latency(port: int, texts: list[str], calls: int) -> list[float]:
    import grpc

    from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc

    times = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        for n in range(calls):
            request = embedding_pb2.EmbedTextsRequest(texts=[texts[n % len(texts)]], packed=True)
            started = time.perf_counter()
            await stub.EmbedTexts(request, timeout=30)
            times.append(time.perf_counter() - started)
    return times


async def model_info(port: int) -> dict[str, Any]:
    import grpc

    from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        info = await embedding_pb2_grpc.EmbeddingServiceStub(channel).GetModelInfo(embedding_pb2.GetModelInfoRequest())
    return {
        "backend": info.backend,
        "dtype": info.dtype,
        "max_batch_size": info.max_batch_size,
        "max_batch_tokens": info.max_batch_tokens,
    }


def pid_on_port(port: int) -> int | None:
    import subprocess

    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    if "pid=" in out:
        return int(out.split("pid=", 1)[1].split(",", 1)[0])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000, help="item texts (the first N of the catalog)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", nargs="+", default=["8x16", "32x1"], help="CONCURRENCYxTEXTS_PER_REQUEST")
    parser.add_argument("--st-batch", type=int, default=32, help="sentence-transformers batch size")
    parser.add_argument(
        "--st-threads", type=int, nargs="+", default=[0, 1], help="torch threads for sentence-transformers; 0: default"
    )
    parser.add_argument("--latency-calls", type=int, default=200)
    parser.add_argument(
        "--variants", nargs="+", default=["default", "fp32"], help="default, fp32, bf16, padded32; -Nt: N torch threads"
    )
    parser.add_argument("--name", default="embedding_throughput")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from services.embedding.encoder import default_model_path

    info = machine()
    texts = item_texts(limit=args.texts)
    tokenizer_lengths = [len(t.split()) for t in texts]
    print(machine_line(info), flush=True)
    print(
        f"{len(texts)} Amazon-Scientific item texts (median {int(np.median(tokenizer_lengths))} words), "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads",
        flush=True,
    )

    reference_model = SentenceTransformer(str(default_model_path()), device="cpu")
    reference = reference_model.encode(texts, batch_size=args.st_batch, normalize_embeddings=True)
    token_counts = [len(ids) for ids in reference_model.tokenizer(texts, truncation=True, max_length=256)["input_ids"]]

    def env_of(variant: str) -> dict[str, str]:
        """default | fp32 | bf16 | padded32, optionally with -<N>t: N torch threads (default: the service's
        default)."""
        name, _, threads = variant.partition("-")
        env = {
            "default": {},
            "fp32": {"EMBEDDING_DTYPE": "float32"},
            "bf16": {"EMBEDDING_DTYPE": "bfloat16"},
            # The path before packed forwards: transformers' padded forward on batches of 32 gathered texts.
            "padded32": {"EMBEDDING_REMOVE_PADDING": "false", "EMBEDDING_MAX_BATCH_SIZE": "32"},
        }[name]
        return {**env, "EMBEDDING_TORCH_THREADS": threads.rstrip("t")} if threads else env

    logs = REPO / "var" / "bench"
    results: dict[str, dict[str, list[float]]] = {"sentence-transformers encode": {"texts_per_s": []}}
    served: dict[str, dict[str, Any]] = {}
    from contextlib import ExitStack

    with ExitStack() as stack:
        ports = {
            v: stack.enter_context(service_process("embedding", env_of(v), logs / f"embedding-{v}.log"))
            for v in args.variants
        }
        for variant, port in ports.items():
            served[variant] = asyncio.run(model_info(port))
            asyncio.run(grpc_throughput(port, texts[:200], 8, 16))  # warm-up
        for repeat in range(args.repeats):
            default_threads = torch.get_num_threads()
            for threads in args.st_threads:
                torch.set_num_threads(threads or default_threads)
                started = time.perf_counter()
                reference_model.encode(texts, batch_size=args.st_batch, normalize_embeddings=True)
                rate = len(texts) / (time.perf_counter() - started)
                key = "sentence-transformers encode" + (f", {threads} torch thread(s)" if threads else "")
                results.setdefault(key, {"texts_per_s": []})["texts_per_s"].append(rate)
                print(f"repeat {repeat}: {key} {rate:.0f} texts/s", flush=True)
            torch.set_num_threads(default_threads)
            for variant, port in ports.items():
                for shape in args.clients:
                    concurrency, size = (int(v) for v in shape.split("x"))
                    rate, vectors = asyncio.run(grpc_throughput(port, texts, concurrency, size))
                    key = f"gRPC {variant} ({served[variant]['backend']}), {concurrency} clients x {size} texts"
                    entry = results.setdefault(key, {"texts_per_s": [], "min_cosine": [], "mean_cosine": []})
                    cosines = (vectors * reference).sum(axis=1)
                    entry["texts_per_s"].append(rate)
                    entry["min_cosine"].append(float(cosines.min()))
                    entry["mean_cosine"].append(float(cosines.mean()))
                    print(f"repeat {repeat}: {key}: {rate:.0f} texts/s, min cosine {cosines.min():.5f}", flush=True)
        latency = {}
        for variant, port in ports.items():
            times = asyncio.run(grpc_latency(port, texts, args.latency_calls))
            latency[variant] = {"p50_ms": percentile(times, 50) * 1000, "p99_ms": percentile(times, 99) * 1000}
            pid = pid_on_port(port)
            latency[variant]["rss_mb"] = rss_mb(pid) if pid else float("nan")
        st_times = []
        for n in range(args.latency_calls):
            started = time.perf_counter()
            reference_model.encode([texts[n % len(texts)]], normalize_embeddings=True)
            st_times.append(time.perf_counter() - started)

    st_rate = median(results["sentence-transformers encode"]["texts_per_s"])
    rows = []
    for key, entry in results.items():
        rate = median(entry["texts_per_s"])
        rows.append(
            [key, rate, rate / st_rate, min(entry.get("min_cosine", [1.0])), median(entry.get("mean_cosine", [1.0]))]
        )
    print()
    print(machine_line(info))
    print(
        f"{len(texts)} item texts, median {int(np.median(token_counts))} tokens (max {max(token_counts)}); "
        f"median of {args.repeats} interleaved repeats; sentence-transformers batch {args.st_batch}; "
        f"served settings: {served}"
    )
    print(table(["path", "texts/s", "x sentence-transformers", "min cosine to fp32", "mean cosine"], rows))
    lat_rows = [
        [f"gRPC {v} ({served[v]['backend']})", latency[v]["p50_ms"], latency[v]["p99_ms"], latency[v]["rss_mb"]]
        for v in latency
    ]
    lat_rows.append(
        [
            "sentence-transformers encode, in process",
            percentile(st_times, 50) * 1000,
            percentile(st_times, 99) * 1000,
            float("nan"),
        ]
    )
    print()
    print("one text per call, sequential:")
    print(table(["path", "p50 ms", "p99 ms", "service RSS MB"], lat_rows))
    data = {
        "machine": info,
        "settings": vars(args),
        "served": served,
        "texts": len(texts),
        "median_tokens": int(np.median(token_counts)),
        "throughput": {k: {**v, "median_texts_per_s": median(v["texts_per_s"])} for k, v in results.items()},
        "latency_batch_1": latency,
        "st_latency_batch_1": {"p50_ms": percentile(st_times, 50) * 1000, "p99_ms": percentile(st_times, 99) * 1000},
    }
    path = write_json(args.name, data)
    plot(rows, path.with_suffix(".png"), info)
    print(f"wrote {path} and {path.with_suffix('.png')}")


def plot(rows: list[list[Any]], path: Path, info: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.5))
    labels = [str(r[0]) for r in rows]
    values = [float(r[1]) for r in rows]
    ax.barh(labels, values, color=["#888" if label.startswith("sentence") else "#3a7" for label in labels])
    for y, (value, ratio) in enumerate(zip(values, (float(r[2]) for r in rows), strict=True)):
        ax.text(value, y, f" {value:.0f} ({ratio:.2f}x)", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("item texts / s (median)")
    ax.set_title(f"Embedding throughput, {info['cpu']}, {info['cores']} cores")
    ax.set_xlim(0, max(values) * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
