"""Fetch MovieLens 100K from GroupLens and convert it to the "plain" dataset format.

MovieLens is for research, non-commercial use and may not be redistributed (see its README): it is downloaded by
each user from its public home, never shipped with this project.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

ML_100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"

# Column order of the 19 genre flags at the end of each u.item row (from the data set's README).
ML_100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


def download_movielens_100k(dest: Path, url: str = ML_100K_URL) -> Path:
    """Download ml-100k into a temporary folder, convert it to the plain format in ``dest``; return ``dest``."""
    dest = Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "ml-100k.zip"
        with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="ml-100k.zip") as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        convert_movielens_100k(Path(tmp) / "ml-100k", dest)
    return dest


def convert_movielens_100k(extracted_dir: Path, dest: Path) -> None:
    """Write ``items.jsonl`` and ``interactions.csv`` in ``dest`` from ``u.item`` and ``u.data``.

    Titles lose their "(1995)" suffix; the year (from the release date, else the title) becomes the ``year``
    attribute; genres come from the flags ("unknown" is left out). Every rating is kept, with event "rating".
    """
    extracted_dir, dest = Path(extracted_dir), Path(dest)
    item_file, data_file = extracted_dir / "u.item", extracted_dir / "u.data"
    for file in (item_file, data_file):
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing; pass the folder extracted from ml-100k.zip")
    dest.mkdir(parents=True, exist_ok=True)
    items_tmp, inter_tmp = dest / ".items.jsonl.tmp", dest / ".interactions.csv.tmp"

    # u.item is Latin-1 (accented titles), '|' separated.
    with item_file.open(encoding="latin-1") as src, items_tmp.open("w", encoding="utf-8") as out:
        for number, line in enumerate(src, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("|")
            if len(fields) != 5 + len(ML_100K_GENRES):
                raise ValueError(f"{item_file}:{number}: {len(fields)} fields, expected {5 + len(ML_100K_GENRES)}")
            item_id, raw_title, release_date = fields[0], fields[1], fields[2]
            match = _TITLE_YEAR.match(raw_title)
            title = match.group("title") if match else raw_title.strip()
            year_text = release_date[-4:] if release_date[-4:].isdigit() else (match.group("year") if match else "")
            genres = [g for g, flag in zip(ML_100K_GENRES, fields[5:], strict=True) if flag == "1" and g != "unknown"]
            record: dict[str, object] = {"item_id": item_id, "title": title, "categories": genres}
            if year_text:
                record["attributes"] = {"year": int(year_text)}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")

    with data_file.open(encoding="utf-8") as src, inter_tmp.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["user_id", "item_id", "timestamp", "rating", "event"])
        for number, line in enumerate(src, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 4:
                raise ValueError(f"{data_file}:{number}: expected 'user item rating timestamp'")
            user, item, rating, timestamp = parts
            writer.writerow([user, item, timestamp, rating, "rating"])

    shutil.move(items_tmp, dest / "items.jsonl")
    shutil.move(inter_tmp, dest / "interactions.csv")
