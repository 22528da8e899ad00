"""Settings of the gateway (environment prefix GATEWAY_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    port: int = Field(50050, ge=0, le=65535, description="gRPC port.")
    default_deadline_s: float = Field(
        10.0, ge=0, description="Deadline of a call whose caller set none (bounds its downstream calls); 0: none."
    )
    preprocessor_address: str = Field("127.0.0.1:50051", description="Preprocessor target (dns:///name:port in k8s).")
    embedding_address: str = Field("127.0.0.1:50052", description="Embedding service target.")
    retriever_address: str = Field("127.0.0.1:50053", description="Retriever service target.")
    ranker_address: str = Field("127.0.0.1:50054", description="Ranker service target.")
    preprocessor_timeout_s: float = Field(2.0, gt=0, description="Deadline of a preprocessor call.")
    embedding_timeout_s: float = Field(30.0, gt=0, description="Deadline of an embedding call (large upserts).")
    retriever_timeout_s: float = Field(10.0, gt=0, description="Deadline of a retriever call.")
    ranker_timeout_s: float = Field(2.0, gt=0, description="Deadline of a ranker call; past it, retrieval order.")
    query_timeout_s: float = Field(
        1.0, gt=0, description="Deadline of cleaning or embedding a query; past it, the fallback (raw text, no query)."
    )
    popular_cache_size: int = Field(200, ge=1, description="Popular items kept to answer while the retriever is down.")
    popular_cache_refresh_s: float = Field(30.0, gt=0, description="How often the popular-items cache is refreshed.")
    backend_tls_ca_file: Path | None = Field(
        None, description="PEM CA bundle that signed the backends' certificates; set to call them over TLS."
    )
    backend_tls_cert_file: Path | None = Field(
        None, description="PEM client certificate for the backends (mutual TLS); set with the key."
    )
    backend_tls_key_file: Path | None = Field(None, description="PEM private key of the client certificate.")
    backend_tls_server_name: str = Field(
        "", description="Name to check in the backends' certificates instead of the target's host."
    )
    max_k: int = Field(100, ge=1, description="Most items one request may ask for.")
    max_offset: int = Field(1000, ge=0, description="Deepest position a page may start at.")
    # 100 nearest items plus 100 item-graph candidates: served Recall@10 equal to full ranking on Amazon-Scientific
    # (README, "Served evaluation"); 1,000 nearest items without the graph's lost 8% and cost 5x the latency.
    candidate_pool: int = Field(100, ge=1, description="Candidates retrieved for the ranker per request.")
    graph_candidates: int = Field(
        100,
        ge=0,
        le=1000,
        description="Candidates the ranker's item graph adds to the pool (items text similarity misses); 0: none.",
    )
    max_filter_conditions: int = Field(64, ge=1, description="Most conditions in one filter.")
    max_query_chars: int = Field(2048, ge=1, description="Longest free-text query.")
    max_text_chars: int = Field(100_000, ge=1, description="Longest item title or description.")
    max_items_per_upsert: int = Field(512, ge=1, description="Most items in one UpsertItems call.")
    max_events_per_call: int = Field(1000, ge=1, description="Most events in one RecordEvents call.")
    max_parallel_writes: int = Field(8, ge=1, description="Users written to the retriever at once per call.")
    retriever_batch: int = Field(
        512, ge=1, description="Most ids the gateway sends the retriever in one call (keep <= RETRIEVER_MAX_BATCH)."
    )
    history_for_ranking: int = Field(50, ge=1, description="Most recent history items the ranker sees.")
    impression_queue: int = Field(
        10_000,
        ge=1,
        description="Answered pages waiting to be recorded (written off the answer's path, retried until the "
        "retriever takes them); when full, Recommend records its page before answering.",
    )
    # 1.0: the ranker's score already holds a text-similarity term whose weight was tuned on validation.
    ranker_weight: float = Field(1.0, ge=0, le=1, description="Share of the ranker's score against similarity.")
    # 0.8: the best Recall@10 with query fidelity >= 0.8 on Amazon-Scientific's validation users (README,
    # "Personalised search"); 0.6 lets the user's side pull in items that do not match, 0.9 barely orders them.
    query_weight: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Share of the cosine to a query in the score of its nearest items when a user or session is "
        "known (the rest: the ranker and the profile). The query decides what matches; the user orders it.",
    )
    reason_similar_percentile: float = Field(
        95.0,
        ge=0,
        le=100,
        description="A reason names a history or session item as similar only when its cosine is above this "
        "percentile of the catalog's pairwise cosines (sampled).",
    )
    reason_graph_min_score: float = Field(
        1.0, description="A reason says 'often chosen by people with a history like yours' above this graph score."
    )
    weight_view: float = Field(1.0, description="Profile weight of a view.")
    weight_click: float = Field(2.0, description="Profile weight of a click.")
    weight_add_to_cart: float = Field(3.0, description="Profile weight of an add-to-cart.")
    weight_purchase: float = Field(4.0, description="Profile weight of a purchase.")
    max_context_items: int = Field(50, ge=1, description="Most context (session) items in one Recommend.")
    rotation_after: int = Field(
        3, ge=0, description="Showings without a response after which an item is rotated down; 0: never."
    )
    rotation_penalty: float = Field(
        0.5, ge=0, description="Score an over-shown item loses per further showing, in standard deviations."
    )
    experiments_file: Path | None = Field(
        None, description="JSON file of running A/B experiments (README: Experiments); unset: none."
    )

    @model_validator(mode="after")
    def _backend_tls_pair(self) -> GatewaySettings:
        if (self.backend_tls_cert_file is None) != (self.backend_tls_key_file is None):
            raise ValueError("set both backend_tls_cert_file and backend_tls_key_file, or neither")
        if self.backend_tls_cert_file is not None and self.backend_tls_ca_file is None:
            raise ValueError("a client certificate (mutual TLS) needs backend_tls_ca_file to check the backends")
        return self
