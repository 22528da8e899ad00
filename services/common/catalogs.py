"""Catalog (tenant) names, checked the same way by every service that keeps catalogs apart."""

from __future__ import annotations

import re

from services.common.errors import InvalidArgumentError

DEFAULT_CATALOG = ""
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def check_catalog(name: str) -> str:
    """The name, when it is the default catalog ("") or 1-64 characters of a-z, 0-9, "_" and "-" starting
    with a letter or digit; else INVALID_ARGUMENT saying the rule."""
    if name == DEFAULT_CATALOG or _NAME.fullmatch(name):
        return name
    raise InvalidArgumentError(
        f"catalog {name[:80]!r} is not a valid name: use 1-64 characters of a-z, 0-9, '_' and '-', "
        "starting with a letter or digit (empty for the default catalog)"
    )
