"""Clean item and user text before it is embedded, and cut it to the encoder's token budget.

Steps, in order: markup removed (a real HTML parser; <script>/<style> bodies dropped; entities unescaped),
Unicode NFKC, control and format characters removed, e-mail addresses and phone numbers masked, whitespace
collapsed, then the text cut to ``max_tokens`` model tokens. Each step reports its ``ChangeKind`` only when it
changed the text, so the service can count what it does to its input without logging the input.

Input far over budget is not cleaned in full: a prefix of the raw text (a character window) is cleaned and
cut, and the window doubles until the cut lies well inside what was cleaned (see ``TextPreprocessor.clean``).
The result is the same as cleaning everything; only changes in the part that is dropped may go unreported.
"""

from __future__ import annotations

import enum
import functools
import re
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import phonenumbers

from services.common.attributes import format_attribute_value
from services.preprocessor.markup import remove_markup
from services.preprocessor.tokens import CHARS_PER_TOKEN_BOUND, TokenBudget

EMAIL_PLACEHOLDER = "[EMAIL]"
PHONE_PLACEHOLDER = "[PHONE]"

# Characters at the end of a cleaned window that may differ from the cleaned full text, because a construct
# was cut by the window edge: an e-mail address is at most ~320 characters, a phonenumbers candidate ~500
# (digit blocks and punctuation are bounded by its pattern), an unfinished tag or entity is held back by the
# parser.
_WINDOW_EDGE_MARGIN = 2048

# RFC 5322 "atext" for the local part (Unicode letters allowed, as in internationalised addresses),
# dot-separated atoms, and a hostname of labels ending in an alphabetic or punycode TLD. The look-behind makes
# a match start at the start of a run of address characters, so a long run without '@' is scanned once, not
# once per position.
_ATEXT = r"[\w!#$%&'*+/=?^`{|}~-]"
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
_EMAIL_RE = re.compile(
    rf"(?<![\w!#$%&'*+/=?^`{{|}}~.-]){_ATEXT}{{1,64}}(?:\.{_ATEXT}{{1,64}})*"
    rf"@(?:{_LABEL}\.)+(?:[^\W\d_]{{2,63}}|xn--[a-z0-9-]{{1,59}})(?![\w-])",
    re.IGNORECASE,
)
_WHITESPACE_RE = re.compile(r"\s+")
# phonenumbers gives up after this many invalid candidates by default (65535); masking must not stop silently.
_PHONE_MAX_TRIES = sys.maxsize


class ChangeKind(enum.StrEnum):
    """What cleaning did to a text; reported in this order, each at most once."""

    MARKUP_REMOVED = "markup_removed"
    CONTROL_CHARACTERS_REMOVED = "control_characters_removed"
    UNICODE_NORMALISED = "unicode_normalised"
    WHITESPACE_COLLAPSED = "whitespace_collapsed"
    EMAIL_MASKED = "email_masked"
    PHONE_MASKED = "phone_masked"
    TRUNCATED = "truncated"


@dataclass(frozen=True)
class CleanedText:
    """A cleaned text, what was changed, and its length in model tokens."""

    text: str
    changes: tuple[ChangeKind, ...]
    token_count: int
    truncated: bool


@dataclass(frozen=True)
class ItemFields:
    """The text fields of a catalog item, as the ingest path hands them over."""

    item_id: str
    title: str
    description: str = ""
    categories: tuple[str, ...] = ()
    brand: str = ""
    attributes: Mapping[str, str | float | bool] = field(default_factory=lambda: MappingProxyType({}))


@functools.cache
def _control_re() -> re.Pattern[str]:
    # Cc (except whitespace, left to the whitespace step), Cf (zero-width, bidi, soft hyphen), Co (private
    # use), Cs (lone surrogates). Built by scanning the Unicode database once, so it follows Python's Unicode
    # version.
    ranges: list[tuple[int, int]] = []
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs") and not char.isspace():
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return re.compile("[" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges) + "]+")


def _mask_phones(text: str, region: str) -> str:
    # Leniency VALID: the number must be a valid number of its region, which keeps model numbers, sizes, years
    # and prices unmasked. A leading '+' makes the region irrelevant, so international numbers are caught
    # anywhere.
    matches = list(
        phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID, max_tries=_PHONE_MAX_TRIES)
    )
    if not matches:
        return text
    pieces: list[str] = []
    position = 0
    for match in matches:
        pieces.append(text[position : match.start])
        pieces.append(PHONE_PLACEHOLDER)
        position = match.end
    pieces.append(text[position:])
    return "".join(pieces)


def _join_sentences(parts: Iterable[str]) -> str:
    """Join non-empty parts with '. ', without doubling a period a part already ends with."""
    out: list[str] = []
    for part in parts:
        if not part:
            continue
        if out:
            out.append(" " if out[-1].endswith((".", "!", "?")) else ". ")
        out.append(part)
    return "".join(out)


class TextPreprocessor:
    """Cleans text and cuts it to a token budget; stateless after construction, so threads can share it."""

    def __init__(
        self,
        budget: TokenBudget,
        max_tokens: int,
        mask_personal_data: bool = True,
        phone_region: str = "US",
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        # "ZZ" (no region) is allowed: only numbers written with a leading '+' are masked then.
        if phone_region.upper() != "ZZ" and phonenumbers.country_code_for_region(phone_region.upper()) == 0:
            raise ValueError(f"unknown phone region {phone_region!r}")
        self._budget = budget
        self._max_tokens = max_tokens
        self._mask_personal_data = mask_personal_data
        self._phone_region = phone_region.upper()

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def clean(self, text: str) -> CleanedText:
        """Clean ``text`` and cut it to the token budget."""
        # Clean a raw prefix, not the whole text: the window edge can only change the last
        # _WINDOW_EDGE_MARGIN cleaned characters, so a cut that ends before them is the cut of the whole text.
        # Otherwise (much markup, very long tokens) the window doubles, at worst up to the whole text.
        window = self._max_tokens * CHARS_PER_TOKEN_BOUND + _WINDOW_EDGE_MARGIN
        while True:
            complete = window >= len(text)
            cleaned, changes = self._normalise(text if complete else text[:window], complete)
            kept = self._budget.truncate(cleaned, self._max_tokens)
            if complete or len(kept) + _WINDOW_EDGE_MARGIN <= len(cleaned):
                break
            window *= 2
        truncated = len(kept) < len(cleaned) or not complete
        if truncated:
            changes.add(ChangeKind.TRUNCATED)
        return CleanedText(
            text=kept,
            changes=_ordered(changes),
            token_count=self._budget.count(kept),
            truncated=truncated,
        )

    def clean_many(self, texts: Sequence[str]) -> list[CleanedText]:
        return [self.clean(text) for text in texts]

    def build_item_text(self, item: ItemFields) -> CleanedText:
        """One text for an item, most important field first, so that the token cut drops the least important.

        ``"{title}. {brand}. {cat1 > cat2}. {key: value; key: value}. {description}"``, empty parts skipped,
        attributes sorted by key (proto maps have no order; the text must be deterministic).
        """
        changes: set[ChangeKind] = set()
        any_truncated = False

        def part(raw: str) -> str:
            nonlocal any_truncated
            cleaned = self.clean(raw)
            changes.update(cleaned.changes)
            any_truncated = any_truncated or cleaned.truncated
            return cleaned.text

        categories = " > ".join(c for c in (part(raw) for raw in item.categories) if c)
        attributes: list[str] = []
        for key in sorted(item.attributes):
            value = part(format_attribute_value(item.attributes[key]))
            if value:
                name = part(key)
                attributes.append(f"{name}: {value}" if name else value)
        joined = _join_sentences(
            (part(item.title), part(item.brand), categories, "; ".join(attributes), part(item.description))
        )
        # Each part is clean and within budget on its own; the joined text needs only the final cut.
        kept = self._budget.truncate(joined, self._max_tokens)
        truncated = any_truncated or len(kept) < len(joined)
        if truncated:
            changes.add(ChangeKind.TRUNCATED)
        return CleanedText(
            text=kept, changes=_ordered(changes), token_count=self._budget.count(kept), truncated=truncated
        )

    def build_many(self, items: Sequence[ItemFields]) -> list[CleanedText]:
        return [self.build_item_text(item) for item in items]

    def _normalise(self, text: str, complete: bool) -> tuple[str, set[ChangeKind]]:
        changes: set[ChangeKind] = set()

        def step(kind: ChangeKind, before: str, after: str) -> str:
            if after != before:
                changes.add(kind)
            return after

        text = step(ChangeKind.MARKUP_REMOVED, text, remove_markup(text, complete))
        if not unicodedata.is_normalized("NFKC", text):
            text = step(ChangeKind.UNICODE_NORMALISED, text, unicodedata.normalize("NFKC", text))
        text = step(ChangeKind.CONTROL_CHARACTERS_REMOVED, text, _control_re().sub("", text))
        if self._mask_personal_data:
            text = step(ChangeKind.EMAIL_MASKED, text, _EMAIL_RE.sub(EMAIL_PLACEHOLDER, text))
            text = step(ChangeKind.PHONE_MASKED, text, _mask_phones(text, self._phone_region))
        collapsed = _WHITESPACE_RE.sub(" ", text)
        # A window keeps its trailing space: stripping it would report a change the full text may not have.
        text = step(ChangeKind.WHITESPACE_COLLAPSED, text, collapsed.strip() if complete else collapsed.lstrip())
        return text, changes


def _ordered(changes: set[ChangeKind]) -> tuple[ChangeKind, ...]:
    return tuple(kind for kind in ChangeKind if kind in changes)
