from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from services.datasets.loaders import (
    DatasetFormatError,
    detect_format,
    load_dataset,
    parse_benchmark_text,
)
from services.datasets.movielens import convert_movielens_100k
from services.evaluation.splits import benchmark_split

DATA = Path(os.environ.get("RECSYS_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
SCIENTIFIC = DATA / "amazon-scientific"
ML_100K = DATA / "ml-100k"


@pytest.mark.skipif(not SCIENTIFIC.is_dir(), reason="amazon-scientific data set not present")
def test_scientific_counts_and_parsing() -> None:
    ds = load_dataset(SCIENTIFIC)
    assert detect_format(SCIENTIFIC) == "benchmark"
    assert len(ds.items) == 4385
    assert len(ds.user_ids) == 8442
    assert len(ds.interactions) == 59384
    items = {item.item_id: item for item in ds.items}
    sanding = items["B0000223SI"]
    assert sanding.title == "PORTER-CABLE 740000801 4 1/2-Inch x 10yd 80 Grit Adhesive-Backed Sanding Roll"
    assert sanding.brand == "PORTER-CABLE"
    assert sanding.categories == (
        "Abrasive & Finishing Products",
        "Abrasive & Finishing Products Manual Sanding Products Sanding Rolls",
    )
    glue = items["B0000223UV"]
    assert glue.brand == "Gorilla"
    assert glue.categories[0] == "Tapes, Adhesives & Sealants"
    assert sum(1 for item in ds.items if not item.categories) == 134  # ". ." in the file: no category path
    # Sequences come from test.inter in order; the first user's history starts with item index 0.
    first_user = ds.sequences()["ABW8NXS7SV55K"]
    assert first_user[0] == "B00TNNWMXI" and len(first_user) == 14
    assert ds.content_hash() == load_dataset(SCIENTIFIC).content_hash()


def test_parse_benchmark_text_edge_cases() -> None:
    assert parse_benchmark_text("Ideal 2006S Crimp Connector (Pack of 100). . Ideal. ") == (
        "Ideal 2006S Crimp Connector (Pack of 100)",
        (),
        "Ideal",
    )
    title, categories, brand = parse_benchmark_text(
        "Fernco Inc. P1056-44 4-Inch Coupling. Industrial & Scientific Hydraulics, Pneumatics & Plumbing "
        "Hydraulic Equipment. Mr. Heater. "
    )
    assert title == "Fernco Inc. P1056-44 4-Inch Coupling"
    assert categories == ("Hydraulics, Pneumatics & Plumbing", "Hydraulics, Pneumatics & Plumbing Hydraulic Equipment")
    assert brand == "Mr. Heater"


@pytest.mark.skipif(not ML_100K.is_dir(), reason="ml-100k data set not present")
def test_ml100k_counts_and_fields() -> None:
    ds = load_dataset(ML_100K)
    assert detect_format(ML_100K) == "recbole"
    assert len(ds.interactions) == 100_000
    assert len(ds.user_ids) == 943
    assert len(ds.items) == 1682
    toy = ds.items[0]
    assert toy.title == "Toy Story"
    assert toy.categories == ("Animation", "Children's", "Comedy")
    assert toy.attributes == {"year": 1995.0}
    assert all(i.rating is not None for i in ds.interactions)
    small = load_dataset(ML_100K, limit_items=10)
    assert len(small.items) == 10
    assert {i.item_id for i in small.interactions} <= {item.item_id for item in small.items}


def _write_plain(folder: Path, items: list[dict[str, object]], csv_text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    (folder / "interactions.csv").write_text(csv_text, encoding="utf-8")
    return folder


def test_plain_round_trip(tmp_path: Path) -> None:
    folder = _write_plain(
        tmp_path / "shop",
        [
            {"item_id": "a", "title": "Drill", "categories": ["Tools"], "brand": "B", "attributes": {"watts": 500}},
            {"item_id": "b", "title": "Bits", "description": "HSS set"},
            {"item_id": "c", "title": "Glue"},
        ],
        "user_id,item_id,timestamp,rating,event\nu2,c,30,,view\nu1,b,20,4.5,purchase\nu1,a,10,,\nu2,a,5,,\n",
    )
    ds = load_dataset(folder)
    assert ds.name == "shop"
    assert ds.items[0].attributes == {"watts": 500.0}
    assert ds.items[1].description == "HSS set"
    assert ds.sequences() == {"u1": ["a", "b"], "u2": ["a", "c"]}
    assert ds.interactions[1].rating == 4.5 and ds.interactions[1].event == "purchase"
    assert ds.interactions[0].event == "view" and ds.interactions[0].rating is None
    limited = load_dataset(folder, limit_items=1)
    assert [i.item_id for i in limited.interactions] == ["a", "a"]
    assert limited.content_hash() != ds.content_hash()


@pytest.mark.parametrize(
    ("items_line", "csv_text", "message"),
    [
        ("{not json\n", "user_id,item_id,timestamp\n", "items.jsonl:1: not valid JSON"),
        ('{"item_id": 7, "title": "x"}\n', "user_id,item_id,timestamp\n", "items.jsonl:1: item_id must be"),
        ('{"item_id": "a", "title": "x"}\n', "user,item\n", "interactions.csv:1: header lacks"),
        ('{"item_id": "a", "title": "x"}\n', "user_id,item_id,timestamp\nu,a,soon\n", "interactions.csv:2: timestamp"),
        ('{"item_id": "a", "title": "x"}\n', "user_id,item_id,timestamp\nu,zz,1\n", "interactions.csv:2: item_id 'zz'"),
    ],
)
def test_plain_errors_name_file_and_line(tmp_path: Path, items_line: str, csv_text: str, message: str) -> None:
    (tmp_path / "items.jsonl").write_text(items_line, encoding="utf-8")
    (tmp_path / "interactions.csv").write_text(csv_text, encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=message):
        load_dataset(tmp_path)


def test_unknown_layout_and_format(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="cannot tell the format"):
        load_dataset(tmp_path)
    with pytest.raises(ValueError, match="unknown dataset format"):
        load_dataset(tmp_path, format="csv")
    with pytest.raises(DatasetFormatError, match="not a folder"):
        load_dataset(tmp_path / "missing")


def test_recbole_header_error(tmp_path: Path) -> None:
    (tmp_path / "x.item").write_text("item_id:token\ttitle\n1\tA\n", encoding="utf-8")
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\n1\t1\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"x\.item:1: header column 'title'"):
        load_dataset(tmp_path)


def test_convert_movielens_100k(tmp_path: Path) -> None:
    raw = tmp_path / "ml-100k"
    raw.mkdir()
    flags_toy = ["0", "0", "0", "1", "1", "1"] + ["0"] * 13
    flags_unknown = ["1"] + ["0"] * 18
    (raw / "u.item").write_bytes(
        (
            "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags_toy) + "\n"
            "2|Café Society (1995)|||http://y|" + "|".join(flags_unknown) + "\n"
        ).encode("latin-1")
    )
    (raw / "u.data").write_text("196\t1\t3\t881250949\n186\t2\t5\t891717742\n196\t2\t4\t881250000\n")
    out = tmp_path / "plain"
    convert_movielens_100k(raw, out)
    ds = load_dataset(out)
    assert detect_format(out) == "plain"
    toy, cafe = ds.items
    assert (toy.title, toy.categories, toy.attributes) == (
        "Toy Story",
        ("Animation", "Children's", "Comedy"),
        {"year": 1995.0},
    )
    assert (cafe.title, cafe.categories, cafe.attributes) == ("Café Society", (), {"year": 1995.0})
    assert ds.sequences() == {"186": ["2"], "196": ["2", "1"]}
    assert all(i.event == "rating" for i in ds.interactions)
    assert ds.interactions[1].rating == 4.0


def _write_benchmark(folder: Path, valid_targets: dict[str, str] | None = None) -> Path:
    """A two-user benchmark folder: indexes, item texts, the test sequences and the validation targets."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Tiny.item2index").write_text("A1\t0\nA2\t1\nA3\t2\nA4\t3\n")
    (folder / "Tiny.user2index").write_text("U1\t0\nU2\t1\n")
    (folder / "Tiny.text").write_text(
        "item_id:token\ttext:token_seq\n"
        "A1\tGlue stick. Industrial & Scientific Tapes, Adhesives & Sealants Glue. Acme. \n"
        "A2\tSanding disc. Industrial & Scientific Abrasive & Finishing Products. Brandless. \n"
        "A3\tScrew set. . Acme. \n"
        "A4\tSafety glasses. Industrial & Scientific. Vision. \n"
    )
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    (folder / "Tiny.test.inter").write_text(header + "0\t0 1 2\t3\n1\t3 2\t1\n")
    targets = valid_targets or {"0": "2", "1": "2"}
    (folder / "Tiny.valid.inter").write_text(header + "0\t0 1\t" + targets["0"] + "\n1\t3\t" + targets["1"] + "\n")
    return folder


def test_benchmark_fixture_and_its_split(tmp_path: Path) -> None:
    folder = _write_benchmark(tmp_path / "tiny")
    assert detect_format(folder) == "benchmark"
    ds = load_dataset(folder)
    assert [i.item_id for i in ds.items] == ["A1", "A2", "A3", "A4"]
    glue = ds.items[0]
    assert (glue.title, glue.brand) == ("Glue stick", "Acme")
    assert glue.categories == ("Tapes, Adhesives & Sealants", "Tapes, Adhesives & Sealants Glue")
    assert ds.items[2].categories == ()
    assert ds.sequences() == {"U1": ["A1", "A2", "A3", "A4"], "U2": ["A4", "A3", "A2"]}
    split = benchmark_split(ds, folder)
    assert split.protocol == "benchmark"
    assert [(c.user_id, c.targets) for c in split.test] == [("U1", (3,)), ("U2", (1,))]
    assert [(c.user_id, c.targets) for c in split.val] == [("U1", (2,)), ("U2", (2,))]
    with pytest.raises(ValueError, match="1 validation targets differ"):
        benchmark_split(ds, _write_benchmark(tmp_path / "other", {"0": "1", "1": "2"}))


def test_recbole_fixture(tmp_path: Path) -> None:
    folder = tmp_path / "mini"
    folder.mkdir()
    (folder / "mini.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Comedy\n"
        "2\tHeat\tunknown\tAction\n"
    )
    (folder / "mini.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t2\t4\t200\n7\t1\t5\t100\n8\t1\t2\t50\n"
    )
    assert detect_format(folder) == "recbole"
    ds = load_dataset(folder)
    assert ds.items[0].title == "Toy Story" and ds.items[0].categories == ("Animation", "Comedy")
    assert ds.items[0].attributes == {"year": 1995.0} and ds.items[1].attributes == {}
    assert ds.sequences() == {"7": ["1", "2"], "8": ["1"]}  # time order, not file order
    assert [i.rating for i in ds.interactions] == [5.0, 4.0, 2.0]
