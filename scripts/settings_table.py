"""Prints the README's configuration table from the services' settings classes (the one source of truth)."""

from __future__ import annotations

from pydantic_settings import BaseSettings

from services.embedding.config import EmbeddingSettings
from services.gateway.config import GatewaySettings
from services.preprocessor.config import PreprocessorSettings
from services.ranker.config import RankerSettings
from services.retriever.config import RetrieverSettings

SETTINGS: tuple[type[BaseSettings], ...] = (
    GatewaySettings,
    PreprocessorSettings,
    EmbeddingSettings,
    RetrieverSettings,
    RankerSettings,
)


def rows() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting of every service."""
    table = []
    for settings in SETTINGS:
        prefix = str(settings.model_config.get("env_prefix", ""))
        for name, field in settings.model_fields.items():
            default = field.get_default(call_default_factory=True)
            shown = "(none)" if default in (None, "") else str(default)
            table.append((f"{prefix}{name.upper()}", shown, field.description or ""))
    return table


def main() -> None:
    print("| Variable | Default | What it sets |")
    print("|---|---|---|")
    for variable, default, description in rows():
        print(f"| `{variable}` | `{default}` | {description} |")


if __name__ == "__main__":
    main()
