"""Settings shared by every service; each service subclasses ServiceSettings with its own env prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Server settings every service has. Read from the environment with the service's prefix."""

    model_config = SettingsConfigDict(extra="ignore", validate_default=True)

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 in containers).")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    max_message_mb: int = Field(16, ge=1, le=1024, description="Largest request or response, in MiB.")
    max_concurrent_rpcs: int = Field(
        256, ge=1, description="Admission bound: calls beyond it get RESOURCE_EXHAUSTED at once."
    )
    grace_period_s: float = Field(10.0, ge=0, description="On SIGTERM, time in-flight calls get to finish.")
    drain_s: float = Field(
        1.0, ge=0, description="On SIGTERM, time between reporting NOT_SERVING and refusing new calls."
    )
    max_connection_age_s: float = Field(
        300.0, gt=0, description="Clients reconnect after this long, so they reach new replicas."
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="The process's event loop: uvloop (libuv, fewer CPU cycles per call) or asyncio's own."
    )
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_json: bool = Field(True, description="JSON log lines (false: human-readable).")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="HTTP port of Prometheus /metrics; default: the gRPC port + 1000; 0: off."
    )
    otlp_endpoint: str = Field(
        "",
        description="OTLP/gRPC collector for traces (http://host:4317); empty: OTEL_EXPORTER_OTLP_ENDPOINT, "
        "unset: tracing off.",
    )
    trace_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of new traces recorded (a caller's sampled trace is always followed)."
    )
    default_deadline_s: float = Field(
        0.0, ge=0, description="Deadline of a call whose caller set none (bounds its downstream calls); 0: none."
    )
    tls_cert_file: Path | None = Field(None, description="PEM server certificate; set with the key to serve TLS only.")
    tls_key_file: Path | None = Field(None, description="PEM private key of the server certificate.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle; when set, callers must present a certificate it signed (mutual TLS)."
    )
    auth_token: SecretStr | None = Field(
        None,
        description="When set, calls must carry `authorization: Bearer <token>` (health and reflection stay open).",
    )

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @model_validator(mode="after")
    def _tls_pair(self) -> ServiceSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def resolved_metrics_port(self) -> int:
        """The metrics port to listen on; 0 (off) when the gRPC port itself is picked at random."""
        if self.metrics_port is not None:
            return self.metrics_port
        return self.port + 1000 if self.port else 0
