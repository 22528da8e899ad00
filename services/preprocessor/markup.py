"""Markup removal, the first step of cleaning: a real HTML parser, <script>/<style> bodies dropped, entities
unescaped. A module of its own, on the standard library only, so that the gateway can strip markup from a query
while the preprocessor is down without importing the tokenizer."""

from __future__ import annotations

from html import unescape
from html.parser import HTMLParser

# Tags that separate words when rendered; inline tags (<b>, <a>, <span>) do not ("un<b>believ</b>able").
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "details", "dialog", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
        "hr", "li", "main", "nav", "ol", "option", "p", "pre", "section", "summary", "table", "tbody", "td",
        "tfoot", "th", "thead", "title", "tr", "ul",
    }
)  # fmt: skip
_SKIPPED_TAGS = frozenset({"script", "style"})


class _TextExtractor(HTMLParser):
    """Collects the character data of a document; entities are unescaped by the parser (convert_charrefs)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._pieces: list[str] = []
        self._skip_depth = 0
        self._separate = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth += 1
        elif tag in _BLOCK_TAGS:
            self._separate = True

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/>: a separator, and never opens a skipped element.
        if tag in _BLOCK_TAGS:
            self._separate = True

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _BLOCK_TAGS:
            self._separate = True

    def handle_data(self, data: str) -> None:
        if self._skip_depth or not data:
            return
        # One space between blocks, added only where neither side has whitespace already, so that markup
        # removal alone does not make the whitespace step report a change.
        if self._separate and self._pieces and not self._pieces[-1][-1].isspace() and not data[0].isspace():
            self._pieces.append(" ")
        self._separate = False
        self._pieces.append(data)

    def text(self) -> str:
        return "".join(self._pieces)


def remove_markup(text: str, complete: bool) -> str:
    """Text content of ``text``.

    With ``complete=False`` (a window of a longer text) an unfinished tag, comment or entity at the end is
    held back by the parser instead of being emitted as text.
    """
    if "<" not in text:
        # No tags: skip the parser, but still decode entities ("Tom &amp; Jerry").
        return unescape(text) if "&" in text else text
    extractor = _TextExtractor()
    extractor.feed(text)
    if complete:
        extractor.close()
    return extractor.text()
