"""Rules every service applies alike to what callers send: ids, the request-id header, and text that must carry
words. They live here once, so that the gateway and the backends accept and refuse the same input."""

from __future__ import annotations

import functools
import re
import unicodedata

from services.common.errors import InvalidArgumentError

MAX_ID_CHARS = 256
ID_RULE = f"1 to {MAX_ID_CHARS} characters, at least one of them visible, no control characters"
REQUEST_ID_RULE = "1 to 128 printable ASCII characters without spaces"
_REQUEST_ID = re.compile(r"[!-~]{1,128}")
# Characters that show nothing: a zero-width space or a direction mark must not pass for an id.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def _invisible(character: str) -> bool:
    return character.isspace() or unicodedata.category(character) in _INVISIBLE_CATEGORIES


def check_id(value: str, field: str, max_chars: int = MAX_ID_CHARS) -> str:
    """The id when it follows the rule; else INVALID_ARGUMENT naming the caller's field and what to fix."""
    if len(value) > max_chars:
        raise InvalidArgumentError(f"{field} has {len(value)} characters; ids are at most {max_chars}")
    problem = _id_problem(value)
    if problem is not None:
        raise InvalidArgumentError(f"{field} {problem}")
    return value


@functools.lru_cache(maxsize=65_536)
def _id_problem(value: str) -> str | None:
    """What is wrong with an id of allowed length, or None. Cached: the same ids come back call after call
    (histories, exclusions, candidates), and reading every character's category was ~5% of a Recommend's CPU
    in the retriever (cProfile)."""
    if all(_invisible(character) for character in value):
        return "is empty or has only invisible characters (spaces, zero-width, control): give the id"
    control = next((character for character in value if unicodedata.category(character) == "Cc"), None)
    if control is not None:
        return f"contains the control character U+{ord(control):04X}: ids are printable text ({ID_RULE})"
    return None


def accepted_request_id(given: str | None) -> str | None:
    """The caller's x-request-id when it follows REQUEST_ID_RULE; None when it is missing or does not (the
    server then makes its own: an unbounded header would be copied into every log line of the call)."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return None


def has_words(text: str) -> bool:
    """True when the text holds a letter or a digit. Text of emoji, symbols or punctuation alone embeds to a
    vector that means nothing, so a search for it would answer arbitrary items."""
    return any(unicodedata.category(character)[0] in "LN" for character in text)
