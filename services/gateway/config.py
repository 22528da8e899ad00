"""Settings of the gateway (environment prefix GATEWAY_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    port: int = Field(50050, ge=0, le=65535, description="gRPC port.")
    preprocessor_address: str = Field("127.0.0.1:50051", description="Preprocessor target (dns:///name:port in k8s).")
    embedding_address: str = Field("127.0.0.1:50052", description="Embedding service target.")
    retriever_address: str = Field("127.0.0.1:50053", description="Retriever service target.")
    ranker_address: str = Field("127.0.0.1:50054", description="Ranker service target.")
    preprocessor_timeout_s: float = Field(2.0, gt=0, description="Deadline of a preprocessor call.")
    embedding_timeout_s: float = Field(30.0, gt=0, description="Deadline of an embedding call (large upserts).")
    retriever_timeout_s: float = Field(10.0, gt=0, description="Deadline of a retriever call.")
    ranker_timeout_s: float = Field(2.0, gt=0, description="Deadline of a ranker call; past it, retrieval order.")
    max_k: int = Field(100, ge=1, description="Most items one request may ask for.")
    max_offset: int = Field(1000, ge=0, description="Deepest position a page may start at.")
    candidate_pool: int = Field(100, ge=1, description="Candidates retrieved for the ranker per request.")
    max_filter_conditions: int = Field(64, ge=1, description="Most conditions in one filter.")
    max_query_chars: int = Field(2048, ge=1, description="Longest free-text query.")
    max_text_chars: int = Field(100_000, ge=1, description="Longest item title or description.")
    max_items_per_upsert: int = Field(512, ge=1, description="Most items in one UpsertItems call.")
    max_events_per_call: int = Field(1000, ge=1, description="Most events in one RecordEvents call.")
    max_parallel_writes: int = Field(8, ge=1, description="Users written to the retriever at once per call.")
    history_for_ranking: int = Field(50, ge=1, description="Most recent history items the ranker sees.")
    ranker_weight: float = Field(0.5, ge=0, le=1, description="Share of the ranker's score against similarity.")
    query_weight: float = Field(0.5, ge=0, le=1, description="Pull of a query on the user's profile vector.")
    weight_view: float = Field(1.0, description="Profile weight of a view.")
    weight_click: float = Field(2.0, description="Profile weight of a click.")
    weight_add_to_cart: float = Field(3.0, description="Profile weight of an add-to-cart.")
    weight_purchase: float = Field(4.0, description="Profile weight of a purchase.")
