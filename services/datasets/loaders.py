"""Load interaction data sets into one in-memory type.

Three on-disk formats are understood:

- ``benchmark``: the UniSRec/RecBole benchmark files (``<Name>.text``, ``<Name>.item2index``,
  ``<Name>.user2index``, ``<Name>.test.inter``), e.g. Amazon "Industrial & Scientific".
- ``recbole``: RecBole atomic files (``<name>.inter`` and ``<name>.item`` with typed headers), e.g. ml-100k.
- ``plain``: a folder with ``items.jsonl`` and ``interactions.csv`` (see :func:`load_dataset`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

AttributeValue = str | float | bool

FORMATS = ("auto", "benchmark", "recbole", "plain")


class DatasetFormatError(ValueError):
    """A data file does not follow its format; the message names the file (and line) and what to fix."""


@dataclass(frozen=True)
class CatalogItem:
    item_id: str
    title: str
    description: str = ""
    categories: tuple[str, ...] = ()
    brand: str = ""
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Interaction:
    user_id: str
    item_id: str
    timestamp: float
    event: str = "view"
    rating: float | None = None


@dataclass(frozen=True)
class Dataset:
    """Items and interactions; ``interactions`` are sorted by (user_id, timestamp), ties in file order."""

    name: str
    items: tuple[CatalogItem, ...]
    interactions: tuple[Interaction, ...]

    def sequences(self) -> dict[str, list[str]]:
        """User id -> item ids in time order."""
        out: dict[str, list[str]] = {}
        for it in self.interactions:
            out.setdefault(it.user_id, []).append(it.item_id)
        return out

    @property
    def user_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(it.user_id for it in self.interactions))

    def content_hash(self) -> str:
        """sha256 over a canonical serialisation of items and interactions (the name is not part of it)."""
        h = hashlib.sha256()
        for item in self.items:
            record = [
                item.item_id,
                item.title,
                item.description,
                list(item.categories),
                item.brand,
                sorted(item.attributes.items()),
            ]
            h.update(b"I" + json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
        for it in self.interactions:
            record2 = [it.user_id, it.item_id, repr(float(it.timestamp)), it.event, it.rating]
            h.update(b"X" + json.dumps(record2, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
        return h.hexdigest()


def load_dataset(path: Path, format: str = "auto", limit_items: int | None = None) -> Dataset:
    """Load the data set in folder ``path``.

    ``format`` is one of ``auto``, ``benchmark``, ``recbole``, ``plain``. ``limit_items`` keeps the first N items in
    file order and only the interactions on them (for tests and demos).

    Plain format: ``items.jsonl`` holds one JSON object a line with ``item_id`` (string), ``title`` and optionally
    ``description``, ``categories`` (list of strings), ``brand``, ``attributes`` (object of string, number or
    boolean); ``interactions.csv`` has the header ``user_id,item_id,timestamp`` (integer timestamp) and optionally
    ``rating`` and ``event`` columns, rows in any order.
    """
    path = Path(path)
    if format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; use one of {', '.join(FORMATS)}")
    if limit_items is not None and limit_items < 1:
        raise ValueError(f"limit_items must be >= 1, got {limit_items}")
    if not path.is_dir():
        raise DatasetFormatError(f"{path}: not a folder; pass the folder that holds the data set files")
    if format == "auto":
        format = detect_format(path)
    if format == "benchmark":
        items, interactions = _load_benchmark(path, limit_items)
    elif format == "recbole":
        items, interactions = _load_recbole(path, limit_items)
    else:
        items, interactions = _load_plain(path, limit_items)
    # Stable sort: equal timestamps keep their file order.
    interactions.sort(key=lambda x: (x.user_id, x.timestamp))
    return Dataset(name=path.name, items=tuple(items), interactions=tuple(interactions))


def detect_format(path: Path) -> str:
    if (path / "items.jsonl").is_file() and (path / "interactions.csv").is_file():
        return "plain"
    if _single(path, "*.test.inter", required=False) and _single(path, "*.text", required=False):
        return "benchmark"
    if _single(path, "*.item", required=False) and _recbole_inter(path, required=False):
        return "recbole"
    raise DatasetFormatError(
        f"{path}: cannot tell the format; expected items.jsonl + interactions.csv (plain), "
        "<Name>.text + <Name>.test.inter (benchmark) or <name>.inter + <name>.item (recbole)"
    )


def _single(path: Path, pattern: str, *, required: bool = True) -> Path | None:
    found = sorted(path.glob(pattern))
    if len(found) > 1:
        raise DatasetFormatError(f"{path}: several files match {pattern}: {[p.name for p in found]}; keep one")
    if not found:
        if required:
            raise DatasetFormatError(f"{path}: no file matches {pattern}")
        return None
    return found[0]


def _recbole_inter(path: Path, *, required: bool = True) -> Path | None:
    found = [p for p in sorted(path.glob("*.inter")) if p.name.count(".") == 1]
    if len(found) != 1:
        if required or found:
            raise DatasetFormatError(f"{path}: expected exactly one <name>.inter file, found {len(found)}")
        return None
    return found[0]


def _lines(file: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without newline), blank lines skipped."""
    with file.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def _is_typed_header(line: str) -> bool:
    return ":token" in line or ":float" in line


# --- benchmark (UniSRec) -------------------------------------------------------------------------------------

_CATEGORY_ROOT = "Industrial & Scientific"

# Top-level departments of Amazon "Industrial & Scientific" that occur in the benchmark file. The category path is
# its levels joined by spaces, so a level's end cannot be found from the text alone ("Industrial Electrical" and
# "Industrial Hardware" share a first word, "Abrasive & Finishing Products" runs straight into "Manual Sanding
# Products"); matching against this list is what makes the department robust. A path matching none of them gets
# its first word as department.
AMAZON_SCIENTIFIC_DEPARTMENTS = (
    "Abrasive & Finishing Products",
    "Additive Manufacturing Products",
    "Commercial Door Products",
    "Cutting Tools",
    "Fasteners",
    "Filtration",
    "Food Service Equipment & Supplies",
    "Hydraulics, Pneumatics & Plumbing",
    "Industrial Electrical",
    "Industrial Hardware",
    "Industrial Power & Hand Tools",
    "Janitorial & Sanitation Supplies",
    "Lab & Scientific Products",
    "Material Handling Products",
    "Occupational Health & Safety Products",
    "Packaging & Shipping Supplies",
    "Power Transmission Products",
    "Professional Dental Supplies",
    "Professional Medical Supplies",
    "Raw Materials",
    "Retail Store Fixtures & Equipment",
    "Robotics",
    "Science Education",
    "Tapes, Adhesives & Sealants",
    "Test, Measure & Inspect",
)

# "<title>. <category path>. <brand>. " where the path starts with the root or is empty (". ."). The title is
# greedy so a title holding ". " still splits at the last path; the path itself never holds a full stop.
_BENCHMARK_TEXT = re.compile(
    r"^(?P<title>.*)\. (?P<path>" + re.escape(_CATEGORY_ROOT) + r"(?: [^.]*)?)?\. (?P<brand>.*?)\.?$", re.DOTALL
)


def parse_benchmark_text(text: str) -> tuple[str, tuple[str, ...], str]:
    """Split a benchmark item text into (title, categories, brand).

    categories is (department, full path below the root) or () when the path is empty.
    """
    text = text.strip()
    m = _BENCHMARK_TEXT.match(text)
    if m is None:
        return text.rstrip(". ").strip(), (), ""
    path = (m.group("path") or "").removeprefix(_CATEGORY_ROOT).strip()
    categories: tuple[str, ...] = ()
    if path:
        categories = (department_of(path), path)
    return m.group("title").strip(), categories, m.group("brand").strip()


def department_of(path: str) -> str:
    matches = [d for d in AMAZON_SCIENTIFIC_DEPARTMENTS if path == d or path.startswith(d + " ")]
    return max(matches, key=len) if matches else path.split(" ", 1)[0]


def _read_index(file: Path) -> dict[str, str]:
    """Integer index -> original id. Works whether the indexes are 0- or 1-based and with or without a header."""
    out: dict[str, str] = {}
    for number, line in _lines(file):
        parts = line.split("\t")
        if number == 1 and (_is_typed_header(line) or not parts[-1].strip().isdigit()):
            continue
        if len(parts) != 2 or not parts[1].strip().isdigit():
            raise DatasetFormatError(f"{file}:{number}: expected '<id><TAB><integer index>', got {line[:80]!r}")
        out[parts[1].strip()] = parts[0].strip()
    return out


def _load_benchmark(path: Path, limit_items: int | None) -> tuple[list[CatalogItem], list[Interaction]]:
    text_file = _single(path, "*.text")
    assert text_file is not None
    name = text_file.name.removesuffix(".text")
    items: list[CatalogItem] = []
    for number, line in _lines(text_file):
        if number == 1 and _is_typed_header(line):
            continue
        item_id, sep, text = line.partition("\t")
        if not sep or not item_id.strip():
            raise DatasetFormatError(f"{text_file}:{number}: expected '<item_id><TAB><text>', got {line[:80]!r}")
        title, categories, brand = parse_benchmark_text(text)
        items.append(CatalogItem(item_id=item_id.strip(), title=title, categories=categories, brand=brand))
        if limit_items is not None and len(items) >= limit_items:
            break
    kept = {item.item_id for item in items}

    item_of = _read_index(path / f"{name}.item2index")
    user_of = _read_index(path / f"{name}.user2index")
    inter_file = path / f"{name}.test.inter"
    interactions: list[Interaction] = []
    for number, line in _lines(inter_file):
        if number == 1 and _is_typed_header(line):
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DatasetFormatError(
                f"{inter_file}:{number}: expected '<user><TAB><history indexes><TAB><target index>'"
            )
        user = user_of.get(parts[0].strip())
        if user is None:
            raise DatasetFormatError(f"{inter_file}:{number}: user index {parts[0]!r} is not in user2index")
        sequence = [*parts[1].split(), parts[2].strip()]
        # The benchmark has no timestamps: a user's position in the sequence (0, 1, 2, ...) stands in for time.
        for position, index in enumerate(sequence):
            item = item_of.get(index)
            if item is None:
                raise DatasetFormatError(f"{inter_file}:{number}: item index {index!r} is not in item2index")
            if item in kept:
                interactions.append(Interaction(user_id=user, item_id=item, timestamp=float(position)))
    return items, interactions


# --- RecBole atomic files ------------------------------------------------------------------------------------


def _recbole_header(file: Path, line: str) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for column in line.split("\t"):
        name, sep, kind = column.strip().partition(":")
        if not sep or kind not in ("token", "token_seq", "float", "float_seq"):
            raise DatasetFormatError(
                f"{file}:1: header column {column!r} must be '<name>:<token|token_seq|float|float_seq>'"
            )
        fields.append((name, kind))
    return fields


def _recbole_rows(file: Path) -> Iterator[tuple[int, dict[str, str]]]:
    lines = _lines(file)
    first = next(lines, None)
    if first is None:
        raise DatasetFormatError(f"{file}: empty file; it needs a typed header line")
    fields = _recbole_header(file, first[1])
    for number, line in lines:
        values = line.split("\t")
        if len(values) != len(fields):
            raise DatasetFormatError(f"{file}:{number}: {len(values)} columns, the header declares {len(fields)}")
        yield number, {name: value.strip() for (name, _), value in zip(fields, values, strict=True)}


def _load_recbole(path: Path, limit_items: int | None) -> tuple[list[CatalogItem], list[Interaction]]:
    item_file = _single(path, "*.item")
    inter_file = _recbole_inter(path)
    assert item_file is not None and inter_file is not None
    with item_file.open(encoding="utf-8") as f:
        fields = _recbole_header(item_file, f.readline().rstrip("\r\n"))
    kinds = dict(fields)
    if "item_id" not in kinds:
        raise DatasetFormatError(f"{item_file}:1: the header needs an item_id column")
    title_field = next(
        (n for n, k in fields if k == "token_seq" and ("title" in n or "name" in n)),
        None,
    )
    category_field = next((n for n, _ in fields if n in ("class", "genre", "genres", "categories")), None)

    items: list[CatalogItem] = []
    for number, row in _recbole_rows(item_file):
        attributes: dict[str, AttributeValue] = {}
        for name, value in row.items():
            if name in ("item_id", title_field, category_field) or not value:
                continue
            if name.endswith("year"):
                # A year is a token in RecBole files; a non-number there ("unkonwn" in ml-100k) means missing.
                with contextlib.suppress(ValueError):
                    attributes["year"] = float(value)
            elif kinds[name] == "float":
                try:
                    attributes[name] = float(value)
                except ValueError:
                    raise DatasetFormatError(f"{item_file}:{number}: {name} {value!r} is not a number") from None
            else:
                attributes[name] = value
        items.append(
            CatalogItem(
                item_id=row["item_id"],
                title=row[title_field] if title_field else "",
                categories=tuple(row[category_field].split()) if category_field else (),
                attributes=attributes,
            )
        )
        if limit_items is not None and len(items) >= limit_items:
            break
    kept = {item.item_id for item in items}

    interactions: list[Interaction] = []
    for number, row in _recbole_rows(inter_file):
        if number == 2 and not {"user_id", "item_id"} <= row.keys():
            raise DatasetFormatError(f"{inter_file}:1: the header needs user_id and item_id columns")
        if row["item_id"] not in kept:
            continue
        try:
            timestamp = float(row.get("timestamp") or number)
            rating = float(row["rating"]) if row.get("rating") else None
        except ValueError:
            raise DatasetFormatError(f"{inter_file}:{number}: timestamp and rating must be numbers") from None
        event = "rating" if rating is not None else "view"
        interactions.append(Interaction(row["user_id"], row["item_id"], timestamp, event, rating))
    return items, interactions


# --- plain ----------------------------------------------------------------------------------------------------


def _plain_item(file: Path, number: int, line: str) -> CatalogItem:
    where = f"{file}:{number}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{where}: not valid JSON ({e.msg}); write one JSON object a line") from None
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{where}: expected a JSON object")
    item_id = obj.get("item_id")
    if not isinstance(item_id, str) or not item_id:
        raise DatasetFormatError(f"{where}: item_id must be a non-empty string (quote numeric ids)")
    title = obj.get("title")
    if not isinstance(title, str):
        raise DatasetFormatError(f"{where}: title must be a string")
    for key in ("description", "brand"):
        if not isinstance(obj.get(key, ""), str):
            raise DatasetFormatError(f"{where}: {key} must be a string")
    categories = obj.get("categories", [])
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise DatasetFormatError(f"{where}: categories must be a list of strings")
    attributes = obj.get("attributes", {})
    if not isinstance(attributes, dict) or not all(
        isinstance(v, str | int | float | bool) for v in attributes.values()
    ):
        raise DatasetFormatError(f"{where}: attributes must be an object of strings, numbers or booleans")
    return CatalogItem(
        item_id=item_id,
        title=title,
        description=obj.get("description", ""),
        categories=tuple(categories),
        brand=obj.get("brand", ""),
        attributes={
            k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in attributes.items()
        },
    )


def _load_plain(path: Path, limit_items: int | None) -> tuple[list[CatalogItem], list[Interaction]]:
    items_file = path / "items.jsonl"
    items: list[CatalogItem] = []
    seen: set[str] = set()
    for number, line in _lines(items_file):
        item = _plain_item(items_file, number, line)
        if item.item_id in seen:
            raise DatasetFormatError(f"{items_file}:{number}: duplicate item_id {item.item_id!r}")
        seen.add(item.item_id)
        items.append(item)
        if limit_items is not None and len(items) >= limit_items:
            break
    kept = {item.item_id for item in items}

    inter_file = path / "interactions.csv"
    interactions: list[Interaction] = []
    with inter_file.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"user_id", "item_id", "timestamp"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetFormatError(
                f"{inter_file}:1: header lacks {sorted(missing)}; it must start with user_id,item_id,timestamp"
            )
        for row in reader:
            number = reader.line_num
            where = f"{inter_file}:{number}"
            user, item_id = (row.get("user_id") or "").strip(), (row.get("item_id") or "").strip()
            if not user or not item_id:
                raise DatasetFormatError(f"{where}: user_id and item_id must not be empty")
            if item_id not in kept:
                if limit_items is None:
                    raise DatasetFormatError(f"{where}: item_id {item_id!r} is not in {items_file.name}")
                continue
            try:
                timestamp = float(int((row.get("timestamp") or "").strip()))
            except ValueError:
                raise DatasetFormatError(f"{where}: timestamp {row.get('timestamp')!r} is not an integer") from None
            rating_text = (row.get("rating") or "").strip()
            try:
                rating = float(rating_text) if rating_text else None
            except ValueError:
                raise DatasetFormatError(f"{where}: rating {rating_text!r} is not a number") from None
            event = (row.get("event") or "").strip() or "view"
            interactions.append(Interaction(user, item_id, timestamp, event, rating))
    return items, interactions
