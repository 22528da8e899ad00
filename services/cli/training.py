"""`recsys train`: item texts as the suite serves them, their embeddings (cached by content hash), the
ranker trained on them, the encoder adapted to the catalog where that pays on validation, and a versioned
checkpoint (with the adapted encoder's version folder beside it)."""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from services.cli.progress import heartbeat
from services.common.catalogs import CATALOG_RULE, DEFAULT_CATALOG, check_catalog
from services.datasets.loaders import CatalogItem, Dataset
from services.embedding.app import base_model_id, base_model_path, encoder_at, load_encoder
from services.embedding.config import EmbeddingSettings
from services.embedding.encoder import TextEncoder
from services.embedding.versions import BASE_VERSION, ENCODERS_DIR, save_version
from services.preprocessor.app import build_preprocessor
from services.preprocessor.cleaning import ItemFields
from services.preprocessor.config import PreprocessorSettings
from services.ranker import distributed
from services.ranker.checkpoints import catalog_root, save_checkpoint
from services.ranker.encoder_tuning import TunedEncoder, TuningConfig, train_head, tune_encoder
from services.ranker.scoring import paired_gain
from services.ranker.splits import Split, loo_split
from services.ranker.training import TrainConfig, TrainResult, sample_cases, train_ranker


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


def encode_texts(encoder: TextEncoder, texts: Sequence[str], desc: str, batch_size: int = 64) -> np.ndarray:
    """(n, dim) float32 vectors of ``texts`` from ``encoder``, with a bar."""
    vectors = np.zeros((len(texts), encoder.dimension), dtype=np.float32)
    with tqdm(total=len(texts), desc=desc, unit="item") as bar:
        for start in range(0, len(texts), batch_size):
            batch = encoder.encode(texts[start : start + batch_size])
            vectors[start : start + len(batch)] = np.stack([e.vector for e in batch])
            bar.update(len(batch))
    return vectors


def embed_items(items: Sequence[CatalogItem], cache_dir: Path) -> tuple[np.ndarray, str]:
    """(n, dim) vectors of the items' texts from the base model the embedding service serves, cached on disk
    under a hash of the model and every text, so a retrain on the same catalog skips the encoder.
    Returns the vectors and the model's id."""
    texts = item_texts(items)
    encoder: TextEncoder = load_encoder(EmbeddingSettings(), BASE_VERSION)
    digest = hashlib.sha256(f"{encoder.model_id}|{encoder.max_tokens}|{encoder.dtype}".encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    cache = cache_dir / f"item-vectors-{digest.hexdigest()[:16]}.npy"
    if cache.is_file():
        return np.load(cache), encoder.model_id
    vectors = encode_texts(encoder, texts, "embedding items")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.rename(cache)
    return vectors, encoder.model_id


def adapt_encoder(
    split: Split, texts: Sequence[str], config: TuningConfig, progress: bool = True
) -> tuple[TunedEncoder, np.ndarray]:
    """The base model fine-tuned on ``split``'s training pairs (:func:`tune_encoder`), then its linear head trained
    on the catalog's vectors as the embedding service serves them from it (the full token limit, its device and
    dtype, the packed forward; :func:`train_head`), and those vectors through the head."""
    settings = EmbeddingSettings()
    tuned = tune_encoder(split, texts, base_model_path(settings), config, progress)
    with tempfile.TemporaryDirectory() as folder:
        tuned.save(Path(folder))
        encoder = encoder_at(settings, Path(folder), model_id="adapted")
        pooled = torch.from_numpy(encode_texts(encoder, texts, "embedding items (adapted encoder)"))
    with heartbeat("training the encoder's linear head"):
        val = sample_cases(split.val, config.eval_users, config.seed)
        head, history = train_head(pooled, split, val, config)
    tuned = replace(tuned, head=head, head_val_ndcg=history)
    # What the service serves from the saved folder: the pooled vector through the head, normalised (normalising
    # before the head changes nothing, as the head is linear).
    vectors = pooled if head is None else torch.nn.functional.normalize(pooled @ head.T, dim=-1)
    return tuned, vectors.numpy()


def catalog_argument(value: str) -> str:
    """argparse type of ``--catalog``: a valid catalog name (empty: the default catalog)."""
    try:
        return check_catalog(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid catalog name {value!r}: use {CATALOG_RULE}") from None


def train_and_publish(
    dataset: Dataset,
    checkpoint_dir: Path,
    cache_dir: Path,
    config: TrainConfig,
    catalog: str = DEFAULT_CATALOG,
    tuning: TuningConfig | None = None,
) -> tuple[Path | None, TrainResult]:
    """Trains and writes a checkpoint into ``catalog``'s folder under ``checkpoint_dir`` (the default catalog:
    ``checkpoint_dir`` itself; catalog NAME: ``checkpoint_dir/catalogs/NAME``). Under torchrun every process
    trains its share and only the leader writes (the others get None); the leader embeds first, so the others
    read its cache instead of running the model.

    With ``tuning`` the encoder is adapted to the training interactions too and a second ranker trained on its
    vectors; the adapted one is published (its encoder written to ``checkpoint_dir/encoders/<version>``, named in
    the checkpoint, and returned) beside the frozen one only when its whole-model validation NDCG@10 beats the
    frozen one's beyond noise."""
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
    if tuning is not None and distributed.rank_and_size()[1] > 1:
        # Every process would adapt its own copy; the vectors the ranker trains on must be one.
        print("adapting the encoder is skipped under torchrun: run `recsys train` in one process", file=sys.stderr)
    elif tuning is not None:
        adapted, encoder_version = _adapted_if_it_pays(dataset, result, checkpoint_dir, config, tuning)
        if encoder_version:
            # Both: the catalog serves the base encoder's vectors until a reindex moves it, and its model stays
            # current meanwhile; the adapted one (published last, the newest) scores once the catalog has moved.
            save_checkpoint(root, result, embedding_model_id=model_id, encoder_version=BASE_VERSION)
            adapted_id = f"{base_model_id(EmbeddingSettings())}@{encoder_version}"
            return save_checkpoint(
                root, adapted, embedding_model_id=adapted_id, encoder_version=encoder_version
            ), adapted
    path = save_checkpoint(root, result, embedding_model_id=model_id, encoder_version=BASE_VERSION) if leader else None
    return path, result


def _adapted_if_it_pays(
    dataset: Dataset, frozen: TrainResult, checkpoint_dir: Path, config: TrainConfig, tuning: TuningConfig
) -> tuple[TrainResult, str]:
    """The ranker trained on the adapted encoder's vectors and the encoder's saved version when its validation
    NDCG@10 beats ``frozen``'s beyond noise (paired bootstrap over the validation users), else ``frozen`` and ""."""
    print("adapting the encoder to the training interactions ...", file=sys.stderr, flush=True)
    tuned, vectors = adapt_encoder(loo_split(dataset), item_texts(dataset.items), tuning)
    with heartbeat("training the ranker on the adapted encoder's vectors"):
        adapted = train_ranker(dataset, ([item.item_id for item in dataset.items], vectors), config)
    gain = paired_gain(adapted.val_ndcg_per_user, frozen.val_ndcg_per_user, config.seed)
    metrics = {
        "val_ndcg@10_frozen": frozen.metrics["val_ndcg@10"],
        "val_ndcg@10_adapted": adapted.metrics["val_ndcg@10"],
        "val_ndcg@10_gain_low": gain.low,
    }
    verdict = "serving the adapted encoder" if gain.beyond_noise else "within noise: keeping the frozen encoder"
    print(f"adapted encoder on validation: {metrics}; {verdict}", file=sys.stderr, flush=True)
    if not gain.beyond_noise:
        return frozen, BASE_VERSION
    settings = EmbeddingSettings()
    version = save_version(
        checkpoint_dir / ENCODERS_DIR,
        tuned.model,
        tuned.tokenizer,
        base_model_path(settings),
        base_model=base_model_id(settings),
        dataset_name=dataset.name,
        dataset_hash=dataset.content_hash(),
        metrics=metrics,
        tuning=tuned.summary(),
        head=tuned.head,
    )
    return adapted, version
