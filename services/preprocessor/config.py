"""Settings of the preprocessor service (environment prefix PREPROCESSOR_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class PreprocessorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PREPROCESSOR_", extra="ignore")

    port: int = Field(50051, ge=0, le=65535, description="gRPC port.")
    model_path: Path | None = Field(
        None,
        description="Model folder whose tokenizer sets the budget; default: the installed all-MiniLM-L6-v2.",
    )
    max_tokens: int = Field(
        254, ge=1, description="Token budget of a cleaned text (the model's 256 less its two special tokens)."
    )
    mask_personal_data: bool = Field(True, description="Replace e-mail addresses and phone numbers.")
    phone_region: str = Field("US", description="Region for phone numbers written without a country code.")
    max_texts_per_request: int = Field(1024, ge=1, description="Most texts or items in one call.")
    workers: int = Field(2, ge=1, description="Threads that clean texts off the event loop.")
    max_text_chars: int = Field(100_000, ge=1, description="Longest text or item field accepted, in characters.")
    max_fields_per_item: int = Field(512, ge=1, description="Most categories plus attributes of one item.")
    max_request_chars: int = Field(
        4_000_000, ge=1, description="Most characters in one call, all texts or item fields together."
    )
