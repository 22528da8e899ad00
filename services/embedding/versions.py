"""Encoder versions: text encoders adapted to a catalog, each a model folder the embedding service can load.

Layout: ``<encoder_dir>/<version>/`` holds the transformers files (config.json, model.safetensors, the tokenizer's
files, sentence-transformers' sentence_bert_config.json with the token limit), the linear head where it has one
(sentence-transformers' modules.json, 1_Pooling/ and 2_Dense/) and ``metadata.json`` (the base model, the data it
was adapted on, its validation metrics, when). `recsys train` writes them under
``<checkpoint_dir>/encoders/``, beside the ranker checkpoints trained on them, whose metadata names the version. A
version is ``<UTC timestamp>-<8 hex of the sha256 of the weights and metadata>``, written in a hidden temporary
folder and renamed into place, so a reader never sees a half-written one. The empty version is the base model
the service is configured with (the packaged all-MiniLM-L6-v2 by default).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from services.common.versions import publish, staging_folder, version_name

METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.safetensors"
BASE_VERSION = ""
ENCODERS_DIR = "encoders"  # under a ranker checkpoint folder: the versions `recsys train` adapted
# Files of the base model's folder that are not the transformers model itself but say how it is used.
CARRIED_FILES = ("sentence_bert_config.json",)
# An adapted encoder's linear head, in sentence-transformers' layout: modules.json lists Transformer, Pooling,
# Dense (the head) and Normalize.
MODULES_FILE = "modules.json"
POOLING_DIR = "1_Pooling"
HEAD_DIR = "2_Dense"
DENSE = "sentence_transformers.models.Dense"
IDENTITY = "torch.nn.modules.linear.Identity"


@dataclass(frozen=True)
class EncoderMetadata:
    version: str
    created_at: str  # ISO 8601, UTC
    base_model: str  # the model id of the weights it started from
    dataset_name: str
    dataset_hash: str
    metrics: dict[str, float]
    tuning: dict[str, Any]  # how it was adapted (layers trained, epochs, ...)

    @classmethod
    def from_file(cls, path: Path) -> EncoderMetadata:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def version_path(encoder_dir: Path, version: str) -> Path:
    return Path(encoder_dir) / version


def list_versions(encoder_dir: Path | None) -> list[str]:
    """The complete versions under ``encoder_dir``, newest first; [] when there is none (or no folder)."""
    if encoder_dir is None or not Path(encoder_dir).is_dir():
        return []
    complete = [
        p.name
        for p in Path(encoder_dir).iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / METADATA_FILE).is_file() and (p / "config.json").is_file()
    ]
    return sorted(complete, reverse=True)  # the name starts with its UTC timestamp


def write_model_folder(folder: Path, model: Any, tokenizer: Any, base_path: Path, head: Tensor | None = None) -> None:
    """A transformers ``model`` and its ``tokenizer`` as a model folder, with the sentence-transformers settings
    of ``base_path``, the folder it started from (the token limit). ``head``, an (out, hidden) linear map the
    pooled vector goes through before it is normalised, is written as sentence-transformers writes a Dense
    module, so sentence-transformers reads the folder as the embedding service does."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    for name in CARRIED_FILES:
        if (base_path / name).is_file():
            shutil.copyfile(base_path / name, folder / name)
    if head is None:
        return
    shutil.copytree(base_path / POOLING_DIR, folder / POOLING_DIR)
    (folder / HEAD_DIR).mkdir()
    out_features, in_features = head.shape
    dense = {"in_features": in_features, "out_features": out_features, "bias": False, "activation_function": IDENTITY}
    (folder / HEAD_DIR / "config.json").write_text(json.dumps(dense, indent=2), encoding="utf-8")
    save_file({"linear.weight": head.detach().float().contiguous()}, folder / HEAD_DIR / WEIGHTS_FILE)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": HEAD_DIR, "type": DENSE},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / MODULES_FILE).write_text(json.dumps(modules, indent=2), encoding="utf-8")


def read_head(folder: Path) -> Tensor | None:
    """The (out, hidden) linear map of the folder's sentence-transformers Dense module, or None when it has none.
    Refuses a Dense module other than a plain linear map, which the embedding service would not compute alike."""
    modules_file = Path(folder) / MODULES_FILE
    if not modules_file.is_file():
        return None
    dense = [m for m in json.loads(modules_file.read_text(encoding="utf-8")) if m.get("type") == DENSE]
    if not dense:
        return None
    if len(dense) > 1:
        raise ValueError(f"{modules_file}: {len(dense)} Dense modules; the embedding service computes at most one")
    path = Path(folder) / dense[0]["path"]
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if config.get("activation_function", IDENTITY) != IDENTITY:
        raise ValueError(
            f"{path}: activation {config['activation_function']}; the embedding service computes a linear head only"
        )
    weights = load_file(path / WEIGHTS_FILE)
    head = weights["linear.weight"].float()
    if "linear.bias" in weights:
        raise ValueError(f"{path}: the head has a bias; the embedding service computes a linear map without one")
    return head


def save_version(
    encoder_dir: Path,
    model: Any,
    tokenizer: Any,
    base_path: Path,
    *,
    base_model: str,
    dataset_name: str,
    dataset_hash: str,
    metrics: dict[str, float],
    tuning: dict[str, Any],
    head: Tensor | None = None,
    now: datetime | None = None,
) -> str:
    """Write a transformers ``model`` and its ``tokenizer`` (:func:`write_model_folder`) as a new version under
    ``encoder_dir``; return the version."""
    encoder_dir = Path(encoder_dir)
    created = (now or datetime.now(UTC)).astimezone(UTC)
    with staging_folder(encoder_dir) as tmp:
        write_model_folder(tmp, model, tokenizer, base_path, head)
        unnamed = EncoderMetadata(
            version="",
            created_at=created.isoformat(timespec="microseconds"),
            base_model=base_model,
            dataset_name=dataset_name,
            dataset_hash=dataset_hash,
            metrics=metrics,
            tuning=tuning,
        )
        contents = [tmp / WEIGHTS_FILE, *([tmp / HEAD_DIR / WEIGHTS_FILE] if head is not None else [])]
        version = version_name(created, contents, asdict(unnamed))
        metadata = replace(unnamed, version=version)
        (tmp / METADATA_FILE).write_text(json.dumps(asdict(metadata), indent=2, sort_keys=True), encoding="utf-8")
        publish(tmp, version_path(encoder_dir, version))
    return version
