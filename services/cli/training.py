"""`recsys train`: item texts as the suite serves them, their embeddings (cached by content hash), the
ranker trained on them, and a versioned checkpoint."""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from tqdm import tqdm

from services.cli.progress import heartbeat
from services.common.catalogs import CATALOG_RULE, DEFAULT_CATALOG, check_catalog
from services.datasets.loaders import CatalogItem, Dataset
from services.embedding.app import load_encoder
from services.embedding.config import EmbeddingSettings
from services.embedding.encoder import TextEncoder
from services.preprocessor.app import build_preprocessor
from services.preprocessor.cleaning import ItemFields
from services.preprocessor.config import PreprocessorSettings
from services.ranker import distributed
from services.ranker.checkpoints import catalog_root, save_checkpoint
from services.ranker.training import TrainConfig, TrainResult, train_ranker


def item_fields(item: CatalogItem) -> ItemFields:
    """The fields the gateway sends the preprocessor for this item (brand travels separately)."""
    return ItemFields(
        item_id=item.item_id,
        title=item.title,
        description=item.description,
        categories=item.categories,
        brand=item.brand,
        attributes=item.attributes,
    )


def item_texts(items: Sequence[CatalogItem]) -> list[str]:
    preprocessor = build_preprocessor(PreprocessorSettings())
    return [result.text for result in preprocessor.build_many([item_fields(i) for i in items])]


def embed_items(items: Sequence[CatalogItem], cache_dir: Path, batch_size: int = 64) -> tuple[np.ndarray, str]:
    """(n, dim) vectors of the items' texts from the model the embedding service serves, cached on disk
    under a hash of the model and every text, so a retrain on the same catalog skips the encoder.
    Returns the vectors and the model's id."""
    texts = item_texts(items)
    encoder: TextEncoder = load_encoder(EmbeddingSettings())
    digest = hashlib.sha256(f"{encoder.model_id}|{encoder.max_tokens}|{encoder.dtype}".encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    cache = cache_dir / f"item-vectors-{digest.hexdigest()[:16]}.npy"
    if cache.is_file():
        return np.load(cache), encoder.model_id
    vectors = np.zeros((len(texts), encoder.dimension), dtype=np.float32)
    with tqdm(total=len(texts), desc="embedding items", unit="item") as bar:
        for start in range(0, len(texts), batch_size):
            batch = encoder.encode(texts[start : start + batch_size])
            vectors[start : start + len(batch)] = np.stack([e.vector for e in batch])
            bar.update(len(batch))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.rename(cache)
    return vectors, encoder.model_id


def catalog_argument(value: str) -> str:
    """argparse type of ``--catalog``: a valid catalog name (empty: the default catalog)."""
    try:
        return check_catalog(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid catalog name {value!r}: use {CATALOG_RULE}") from None


def train_and_publish(
    dataset: Dataset, checkpoint_dir: Path, cache_dir: Path, config: TrainConfig, catalog: str = DEFAULT_CATALOG
) -> tuple[Path | None, TrainResult]:
    """Trains and writes a checkpoint into ``catalog``'s folder under ``checkpoint_dir`` (the default catalog:
    ``checkpoint_dir`` itself; catalog NAME: ``checkpoint_dir/catalogs/NAME``). Under torchrun every process
    trains its share and only the leader writes (the others get None); the leader embeds first, so the others
    read its cache instead of running the model."""
    root = catalog_root(checkpoint_dir, catalog)
    leader = distributed.is_leader()
    if leader:
        print("building the items' texts and loading the embedding model ...", file=sys.stderr, flush=True)
    else:
        distributed.barrier()
    vectors, model_id = embed_items(dataset.items, cache_dir)
    if leader:
        distributed.barrier()
    ids = [item.item_id for item in dataset.items]
    # The epochs draw a bar; choosing the item graph and the fusion weights on validation after them draws none.
    step = "training the ranker (epochs, then the item graph and fusion weights chosen on validation)"
    with heartbeat(step) if leader else nullcontext():
        result = train_ranker(dataset, (ids, vectors), config, progress=leader)
    path = save_checkpoint(root, result, embedding_model_id=model_id) if leader else None
    return path, result
