"""Settings of the retriever service (environment prefix RETRIEVER_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class RetrieverSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVER_", extra="ignore")

    port: int = Field(50053, ge=0, le=65535, description="gRPC port.")
    data_dir: Path = Field(Path("var/qdrant"), description="Folder of the embedded engine's shards.")
    qdrant_url: str = Field("", description="Qdrant server or cluster URL; empty: the embedded engine.")
    qdrant_api_key: str = Field("", description="API key for the Qdrant server, if it wants one.")
    qdrant_shards: int | None = Field(None, ge=1, description="Shards of new collections on a cluster.")
    qdrant_replication_factor: int | None = Field(None, ge=1, description="Replicas of each shard on a cluster.")
    dimension: int = Field(384, ge=1, description="Vector size (the embedding model's dimension).")
    hnsw_m: int = Field(16, ge=4, description="HNSW edges per node.")
    # 200: recall@100 0.987 at 100k vectors (0.93 at 100), p99 1.3 ms; search uses the same ef
    # (docs/performance.md, bench/retrieval.py).
    hnsw_ef_construct: int = Field(
        200, ge=4, description="HNSW candidates while building (and searching: the engine's default ef)."
    )
    index_min_unindexed: int = Field(
        20_000,
        ge=1,
        description="Unindexed items that start a background HNSW build (embedded engine), also right after a build.",
    )
    index_idle_s: float = Field(
        60.0,
        ge=0,
        description="After this long without item writes, build the index when at least "
        "RETRIEVER_INDEX_IDLE_MIN_UNINDEXED items are unindexed (embedded engine; 0: never).",
    )
    index_idle_min_unindexed: int = Field(
        1_000,
        ge=1,
        description="Unindexed items that start a build once writes have stopped (the tail of a bulk load).",
    )
    max_history: int = Field(200, ge=1, description="Events kept per user (newest).")
    half_life_events: float = Field(20.0, gt=0, description="Events after which an event's pull on the profile halves.")
    max_limit: int = Field(1000, ge=1, description="Most results of one query.")
    max_batch: int = Field(512, ge=1, description="Most items, ids or queries in one call.")
    workers: int = Field(4, ge=1, description="Threads that run engine calls off the event loop.")
    item_cache_items: int = Field(
        100_000,
        ge=0,
        description="Embedded engine: items kept decoded for search results (payload, its JSON and float32 "
        "vector; about 2.5 KB each; 0: none). The engine hands them out as Python objects, which cost more than "
        "the search.",
    )
    max_exclude_ids: int = Field(10_000, ge=0, description="Most excluded ids (and most only_ids) in one query.")
    max_filter_values: int = Field(1_000, ge=1, description="Most conditions and values in one filter.")
    max_catalogs: int = Field(
        32,
        ge=0,
        description="Most named catalogs besides the default; a write that would create one more fails with "
        "FAILED_PRECONDITION.",
    )
    sync_writes: bool = Field(
        False,
        description="Flush to disk before acknowledging a write (survives a machine crash; kill -9 is covered "
        "either way by the WAL). Embedded engine only.",
    )
