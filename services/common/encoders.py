"""How services name encoder versions to each other. Inside a service the base model is the empty version; on
the wire, where an empty metadata value reads as missing, it is BASE_TOKEN (the embedding service's own name
for the base model in EmbedTexts)."""

from __future__ import annotations

# Trailing metadata of a FAILED_PRECONDITION that vectors of another encoder caused: the encoder served now.
SERVING_ENCODER_KEY = "recsys-serving-encoder"
BASE_TOKEN = "base"


def encoder_token(version: str) -> str:
    return version or BASE_TOKEN


def encoder_from_token(token: str) -> str:
    return "" if token == BASE_TOKEN else token


def encoder_label(version: str) -> str:
    """An encoder version as messages name it."""
    return "the base encoder" if not version else f"encoder {version}"
