"""The encoder's compute paths in process (no RPC), on Amazon-Scientific item texts: sentence-transformers
`encode` vs our TextEncoder in fp32, bf16 autocast (packed and padded forwards) and bf16 weights; texts/s
(median of interleaved repeats) and the minimum cosine of each path's vectors to transformers' fp32 forward.
`--chunk N` hands the encoder N texts at a time in catalog order, as the service's gathered batches arrive
(0: all at once, sorted by length over the whole list).

    .venv/bin/python bench/encoder_variants.py [--texts 512] [--repeats 3] [--threads 1] [--chunk 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import item_texts, machine, machine_line, median, table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    parser.add_argument("--chunk", type=int, default=0, help="texts per encode call; 0: all at once")
    parser.add_argument("--name", default="encoder_variants")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from services.embedding.encoder import TextEncoder, default_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    texts = item_texts(limit=args.texts)
    path = default_model_path()
    encoders = {
        "ours fp32, padded (transformers' forward)": TextEncoder(path, dtype="float32", remove_padding=False),
        "ours fp32, packed": TextEncoder(path, dtype="float32"),
        "ours bf16 autocast, padded": TextEncoder(path, dtype="bfloat16", remove_padding=False),
        "ours bf16 autocast, packed (the default)": TextEncoder(path, dtype="bfloat16"),
    }
    weights = TextEncoder(path, dtype="float32")
    weights.model.to(torch.bfloat16)
    encoders["ours bf16 weights, packed"] = weights
    reference = np.stack([e.vector for e in encoders["ours fp32, padded (transformers' forward)"].encode(texts)])
    chunk = args.chunk or len(texts)

    def encode(encoder: TextEncoder) -> np.ndarray:
        return np.stack(
            [e.vector for start in range(0, len(texts), chunk) for e in encoder.encode(texts[start : start + chunk])]
        )

    st = SentenceTransformer(str(path), device="cpu")
    rates: dict[str, list[float]] = {"sentence-transformers encode (batch 32)": []}
    cosines: dict[str, float] = {
        "sentence-transformers encode (batch 32)": float(
            (st.encode(texts, batch_size=32, normalize_embeddings=True) * reference).sum(axis=1).min()
        )
    }
    for name, encoder in encoders.items():
        vectors = encode(encoder)
        cosines[name] = float((vectors * reference).sum(axis=1).min())
        rates[name] = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        st.encode(texts, batch_size=32, normalize_embeddings=True)
        rates["sentence-transformers encode (batch 32)"].append(len(texts) / (time.perf_counter() - started))
        for name, encoder in encoders.items():
            started = time.perf_counter()
            encode(encoder)
            rates[name].append(len(texts) / (time.perf_counter() - started))
    base = median(rates["sentence-transformers encode (batch 32)"])
    rows = [[name, median(r), median(r) / base, cosines[name]] for name, r in rates.items()]
    print(machine_line(info))
    print(
        f"{len(texts)} item texts, {chunk} per call, {torch.get_num_threads()} torch threads, "
        f"median of {args.repeats} interleaved"
    )
    print(table(["path", "texts/s", "x sentence-transformers", "min cosine to fp32"], rows))
    path_out = write_json(
        args.name, {"machine": info, "settings": vars(args), "torch_threads": torch.get_num_threads(), "rows": rows}
    )
    print(f"wrote {path_out}")


if __name__ == "__main__":
    main()
