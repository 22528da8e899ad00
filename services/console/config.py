"""Settings of the operator console (environment prefix CONSOLE_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONSOLE_", extra="ignore", validate_default=True)

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 in containers).")
    port: int = Field(50055, ge=0, le=65535, description="HTTP port of the console.")
    gateway_address: str = Field("127.0.0.1:50050", description="The gateway: recommendations, items, search.")
    retriever_address: str = Field(
        "127.0.0.1:50053", description="The retriever: histories, stored items, index state, impressions."
    )
    ranker_address: str = Field("", description="The ranker, for its model version; empty: not shown.")
    preprocessor_address: str = Field("", description="The preprocessor, for its health; empty: not shown.")
    embedding_address: str = Field("", description="The embedding service, for its health; empty: not shown.")
    auth_token: SecretStr | None = Field(
        None,
        description="The gateway's bearer token (GATEWAY_AUTH_TOKEN): sent on every call, and asked of every "
        "console user (HTTP Basic password, or `authorization: Bearer <token>`).",
    )
    tls: bool = Field(False, description="Call the services over TLS (checked against the system's roots).")
    catalogs: list[str] = Field(
        default_factory=list, description='Named catalogs shown besides the default one (JSON list: ["articles"]).'
    )
    experiments_file: Path | None = Field(
        None, description="The gateway's experiments file, to list experiments and their arms' order."
    )
    deadline_s: float = Field(10.0, gt=0, description="Deadline of each call the console makes.")
    impression_scan_limit: int = Field(
        20_000, ge=1, description="Most impressions read for an item's shown counts or an experiment's report."
    )
