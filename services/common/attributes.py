"""How an item attribute value reads as text. One function, used wherever item text is built (the
preprocessor, and callers that send it attributes as strings), so served and trained texts agree."""

from __future__ import annotations

AttributeValue = str | float | bool


def format_attribute_value(value: AttributeValue) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)
