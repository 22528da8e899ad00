"""Catalog (tenant) names, checked the same way by every service that keeps catalogs apart."""

from __future__ import annotations

import re

from services.common.errors import InvalidArgumentError

DEFAULT_CATALOG = ""
CATALOG_RULE = "1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def is_catalog_name(name: str) -> bool:
    """True for a named catalog's valid name (the default catalog, "", is not one)."""
    return bool(_NAME.fullmatch(name))


def check_catalog(name: str) -> str:
    """The name, when it is the default catalog ("") or a valid name; else INVALID_ARGUMENT saying the rule."""
    if name == DEFAULT_CATALOG or is_catalog_name(name):
        return name
    raise InvalidArgumentError(
        f"catalog {name[:80]!r} is not a valid name: use {CATALOG_RULE} (empty for the default catalog)"
    )
