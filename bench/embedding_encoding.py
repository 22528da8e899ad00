"""What EmbedTexts' response encoding costs per text, in process: the servicer building and serialising a response
of --texts vectors, and the gateway's client parsing it into a matrix, with each vector as 384 floats (`values`)
or the whole response as one float32 matrix (`packed`). The model is left out (its vectors are precomputed), so
this is the host work that bounds the service once the model is fast (on a GPU).

    .venv/bin/python bench/embedding_encoding.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine, machine_line, median, table, write_json
from recsys.embedding.v1 import embedding_pb2
from services.embedding.embedder import Embedded
from services.embedding.encoder import EncodedText
from services.embedding.servicer import EmbeddingServicer
from services.gateway.backends import embedding_matrix


class PrecomputedEmbedder:
    """Stands in for the model: answers every call with the same vectors, so only the encoding is timed."""

    def __init__(self, encoded: Sequence[EncodedText], dimension: int) -> None:
        self._encoded = list(encoded)
        self.encoder = SimpleNamespace(model_id="sentence-transformers/all-MiniLM-L6-v2", dimension=dimension)

    async def embed(self, texts: Sequence[str], version: str = "") -> Embedded:
        return Embedded(version, self.encoder.model_id, self._encoded[: len(texts)])


def per_text_us(work: Callable[[], Any], texts: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) / texts * 1e6)
    return median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=512, help="texts per response")
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.texts, args.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    encoded = [EncodedText(vector=v, token_count=42, truncated=False) for v in vectors]
    servicer = EmbeddingServicer(PrecomputedEmbedder(encoded, args.dimension))  # type: ignore[arg-type]
    texts = [f"item {i}" for i in range(args.texts)]
    loop = asyncio.new_event_loop()

    rows: list[list[object]] = []
    results: dict[str, dict[str, float]] = {}
    for encoding, packed in (("values", False), ("packed", True)):
        request = embedding_pb2.EmbedTextsRequest(texts=texts, packed=packed)

        def build(request: embedding_pb2.EmbedTextsRequest = request) -> bytes:
            response = loop.run_until_complete(servicer.EmbedTexts(request, None))
            return response.SerializeToString()

        wire = build()
        parsed = embedding_matrix(embedding_pb2.EmbedTextsResponse.FromString(wire))
        assert np.allclose(parsed, vectors), "the encoding must carry the vectors unchanged"
        server = per_text_us(build, args.texts, args.repeats)

        def parse(wire: bytes = wire) -> np.ndarray:
            return embedding_matrix(embedding_pb2.EmbedTextsResponse.FromString(wire))

        client = per_text_us(parse, args.texts, args.repeats)
        results[encoding] = {"server_us": server, "client_us": client, "bytes_per_text": len(wire) / args.texts}
        rows.append([encoding, server, client, server + client, len(wire) / args.texts])
    loop.close()

    info = machine()
    print(machine_line(info))
    print(f"{args.texts} texts per response, {args.dimension} dimensions, median of {args.repeats}")
    print(table(["encoding", "server build + serialise, us/text", "client parse, us/text", "both", "bytes/text"], rows))
    path = write_json("embedding_encoding", {"machine": info, "settings": vars(args), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
