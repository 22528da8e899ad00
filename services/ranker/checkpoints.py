"""Versioned ranker checkpoints.

Layout: ``<root>/<version>/model.pt`` (state dict, architecture, item ID vocabulary, item graph, fusion weights) and
``<root>/<version>/metadata.json``. A version is ``<UTC timestamp>-<8 hex of the sha256 of the weights and
metadata>``, e.g. ``20261128T051500Z-3fa2c1d0``. A version is written in a hidden temporary folder and renamed
into place, so a reader never sees a half-written one.

Catalogs keep models apart: the default catalog (the empty name) lives in ``<checkpoint_dir>/`` itself, catalog
``NAME`` in ``<checkpoint_dir>/catalogs/NAME/``, each with the layout above. ``catalogs`` never holds a
``model.pt``, so the default catalog's listing skips it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from services.common.catalogs import DEFAULT_CATALOG, check_catalog
from services.common.versions import publish, staging_folder, version_name
from services.ranker.model import Fusion, ItemGraph, ModelConfig, RankerModel, RankerScorer
from services.ranker.training import TrainResult

MODEL_FILE = "model.pt"
METADATA_FILE = "metadata.json"
# 3 keeps the item graph by source row (CSR), as the ranker holds it; 2 (the graph as target x source COO, which
# loading had to regroup) and 1 (transformer only, no graph or fusion weights) still load.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, FORMAT_VERSION)
CATALOGS_DIR = "catalogs"


def catalog_root(checkpoint_dir: Path, catalog: str) -> Path:
    """The folder of ``catalog``'s versions: ``checkpoint_dir`` for the default catalog, else
    ``checkpoint_dir/catalogs/<catalog>``."""
    check_catalog(catalog)
    return Path(checkpoint_dir) if catalog == DEFAULT_CATALOG else Path(checkpoint_dir) / CATALOGS_DIR / catalog


@dataclass(frozen=True)
class CheckpointMetadata:
    version: str
    created_at: str  # ISO 8601, UTC
    dataset_name: str
    dataset_hash: str
    embedding_model_id: str
    train_config: dict[str, Any]
    model_config: dict[str, Any]
    metrics: dict[str, float]
    n_items: int
    n_users: int
    epochs: int
    best_epoch: int
    train_seconds: float
    format_version: int = FORMAT_VERSION
    # The encoder version whose vectors the model was trained on (services/embedding/versions.py); empty: the base
    # model, as for every checkpoint written before versions existed.
    encoder_version: str = ""

    @classmethod
    def from_file(cls, path: Path) -> CheckpointMetadata:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**data)


def save_checkpoint(
    root: Path,
    result: TrainResult,
    *,
    embedding_model_id: str,
    encoder_version: str = "",
    now: datetime | None = None,
) -> Path:
    """Write ``result`` as a new version under ``root``; return the version folder. ``encoder_version`` names
    the encoder the item vectors came from (empty: the base model)."""
    root = Path(root)
    created = (now or datetime.now(UTC)).astimezone(UTC)
    with staging_folder(root) as tmp:
        # Written straight to the file and hashed from it: a large catalog's weights are not copied into an
        # in-memory file first.
        torch.save(
            {
                "format_version": FORMAT_VERSION,
                "model_config": result.model_config.to_dict(),
                "item_ids": list(result.item_ids),
                "state_dict": result.state_dict,
                "graph": result.graph.to_tensors() if result.graph is not None else None,
                # Novelty beside the fusion, not in it: a ranker from before the term reads the fusion it knows
                # (its Fusion takes no other keys) and scores as before, so a rollback can load this version.
                "fusion": {k: v for k, v in result.fusion.to_dict().items() if k != "novelty"},
                "novelty": result.fusion.novelty,
            },
            tmp / MODEL_FILE,
        )
        unnamed = CheckpointMetadata(
            version="",
            created_at=created.isoformat(timespec="microseconds"),
            dataset_name=result.dataset_name,
            dataset_hash=result.dataset_hash,
            embedding_model_id=embedding_model_id,
            train_config=result.config.to_dict(),
            model_config=result.model_config.to_dict(),
            metrics=result.metrics,
            n_items=result.n_items,
            n_users=result.n_users,
            epochs=result.epochs,
            best_epoch=result.best_epoch,
            train_seconds=round(result.seconds, 3),
            encoder_version=encoder_version,
        )
        version = version_name(created, [tmp / MODEL_FILE], asdict(unnamed))
        metadata = replace(unnamed, version=version)
        (tmp / METADATA_FILE).write_text(json.dumps(asdict(metadata), indent=2, sort_keys=True), encoding="utf-8")
        final = root / version
        publish(tmp, final)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Every complete version folder under ``root``, newest first (by timestamp, then name); [] if none."""
    root = Path(root)
    if not root.is_dir():
        return []
    complete = [
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MODEL_FILE).is_file() and (p / METADATA_FILE).is_file()
    ]
    return sorted(
        complete, key=lambda p: (CheckpointMetadata.from_file(p / METADATA_FILE).created_at, p.name), reverse=True
    )


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete version folder under ``root`` (by its timestamp), or None."""
    versions = list_checkpoints(root)
    return versions[0] if versions else None


def load_scorer(path: Path, device: str = "cpu") -> tuple[RankerScorer, CheckpointMetadata]:
    """Load the version folder ``path`` into a scorer on ``device``."""
    path = Path(path)
    metadata = CheckpointMetadata.from_file(path / METADATA_FILE)
    data = torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True)
    if data.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{path / MODEL_FILE}: format version {data.get('format_version')}, expected one of {READABLE_VERSIONS}"
        )
    with torch.device("meta"):  # no weights allocated (and initialised) only to be replaced by the loaded ones
        model = RankerModel(ModelConfig.from_dict(data["model_config"]))
    model.load_state_dict(data["state_dict"], assign=True)  # the loaded tensors become the weights: no copy
    graph = ItemGraph.from_tensors(data["graph"]) if data.get("graph") is not None else None
    fusion = Fusion.from_dict({**data["fusion"], "novelty": data.get("novelty", 0.0)}) if "fusion" in data else Fusion()
    scorer = RankerScorer(model=model, item_ids=tuple(data["item_ids"]), device=device, graph=graph, fusion=fusion)
    return scorer, metadata
