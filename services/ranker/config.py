"""Settings of the ranker service (environment prefix RANKER_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class RankerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RANKER_", extra="ignore")

    port: int = Field(50054, ge=0, le=65535, description="gRPC port.")
    checkpoint_dir: Path = Field(Path("var/checkpoints"), description="Folder of versioned checkpoints.")
    device: str = Field("auto", description="auto (CUDA when present), cpu or cuda:N.")
    reload_interval_s: float = Field(10.0, gt=0, description="How often to look for a newer checkpoint.")
    max_tasks_per_request: int = Field(64, ge=1, description="Most users in one ScoreCandidates call.")
    max_candidates: int = Field(2000, ge=1, description="Most candidates for one user.")
    max_history: int = Field(500, ge=1, description="Most history items for one user (the model reads the newest).")
    max_loaded_models: int = Field(
        4,
        ge=1,
        description="Most ranker models held in memory across catalogs and pinned versions; the least recently used "
        "go first, the default catalog's newest stays.",
    )
