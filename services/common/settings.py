"""Settings shared by every service; each service subclasses ServiceSettings with its own env prefix."""

from __future__ import annotations

from pydantic import Field
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
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_json: bool = Field(True, description="JSON log lines (false: human-readable).")

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
