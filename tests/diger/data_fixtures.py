"""Tiny raw-file fixtures for the data-recipe tests (written by the tests themselves; no real data).

Not a test module: it holds helpers imported by ``tests/diger/test_data_*.py``. The fixtures cover: an item
with no title, a user below the 5-core threshold, a duplicated interaction, equal timestamps
within a user, a title with a tab, a title starting with a quote, a title that pandas reads as
missing (``NA``) and a latin-1 title.
"""
from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

# --- Amazon 2014 -------------------------------------------------------------------------------
# Users UA..UE review items I1..I5 (a 5 x 5 block = the 5-core); UF has 2 reviews (below the
# threshold) and is the only reviewer of I6; UA reviews I1 twice (the duplicate, later time);
# UB has two reviews at t=100 (I5 before I4 in the file: file order breaks the tie).
REVIEWS_2014 = [
    ("UA", "I1", 100), ("UA", "I2", 200), ("UA", "I3", 300), ("UA", "I4", 400), ("UA", "I5", 500),
    ("UA", "I1", 600),
    ("UB", "I5", 100), ("UB", "I4", 100), ("UB", "I3", 50), ("UB", "I2", 300), ("UB", "I1", 400),
    ("UF", "I1", 1), ("UF", "I6", 2),
    ("UC", "I1", 10), ("UC", "I2", 20), ("UC", "I3", 30), ("UC", "I4", 40), ("UC", "I5", 50),
    ("UD", "I1", 10), ("UD", "I2", 20), ("UD", "I3", 30), ("UD", "I4", 40), ("UD", "I5", 50),
    ("UE", "I5", 10), ("UE", "I4", 20), ("UE", "I3", 30), ("UE", "I2", 40), ("UE", "I1", 50),
]
# Metadata lines as in the 2014 dumps: Python literals (single quotes, u'' prefixes, \x escapes).
META_2014_LINES = [
    "{'asin': 'I1', 'title': 'Shampoo\\tDeluxe', 'brand': 'Brandy', 'categories': [['Beauty', 'Hair Care'], ['Beauty', 'Shampoo']], 'price': 3.5}",
    "{'asin': 'I2', 'brand': 'B2', 'categories': [['Beauty']]}",
    "{'asin': 'I3', 'title': '\"Best\" Lotion', 'categories': [['Beauty', 'Skin']]}",
    "{'asin': 'I4', 'title': u'L\\'Or\\xe9al Cr\\xe8me', 'brand': u'L\\'Or\\xe9al', 'categories': [['Beauty']]}",
    "{'asin': 'I5', 'title': 'NA', 'brand': '', 'categories': []}",
    "{'asin': 'I6', 'title': 'Dropped by the 5-core', 'categories': [['Beauty']]}",
]
EXPECTED_INTER_2014 = [
    ("UA", "I1", "100"), ("UA", "I2", "200"), ("UA", "I3", "300"), ("UA", "I4", "400"), ("UA", "I5", "500"),
    ("UB", "I3", "50"), ("UB", "I5", "100"), ("UB", "I4", "100"), ("UB", "I2", "300"), ("UB", "I1", "400"),
    ("UC", "I1", "10"), ("UC", "I2", "20"), ("UC", "I3", "30"), ("UC", "I4", "40"), ("UC", "I5", "50"),
    ("UD", "I1", "10"), ("UD", "I2", "20"), ("UD", "I3", "30"), ("UD", "I4", "40"), ("UD", "I5", "50"),
    ("UE", "I5", "10"), ("UE", "I4", "20"), ("UE", "I3", "30"), ("UE", "I2", "40"), ("UE", "I1", "50"),
]
# item_id, title, brand, categories (the decoded values, i.e. what RecBole/pandas read back)
EXPECTED_ITEMS_2014 = [
    ("I1", "Shampoo Deluxe", "Brandy", "Beauty, Hair Care | Beauty, Shampoo"),
    ("I2", "", "B2", "Beauty"),
    ("I3", '"Best" Lotion', "", "Beauty, Skin"),
    ("I4", "L'Oréal Crème", "L'Oréal", "Beauty"),
    ("I5", "NA", "", ""),
]


def write_gz_lines(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    return path


def amazon2014_raw(d: Path, category: str = "Fix") -> Path:
    """Write ``reviews_<cat>_5.json.gz`` and ``meta_<cat>.json.gz`` into ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    write_gz_lines(d / f"reviews_{category}_5.json.gz", [
        json.dumps({"reviewerID": u, "asin": i, "reviewerName": "x", "overall": 5.0, "unixReviewTime": t,
                    "reviewText": "fine\ttext"}) for u, i, t in REVIEWS_2014])
    write_gz_lines(d / f"meta_{category}.json.gz", META_2014_LINES)
    return d


# --- Amazon 2018 -------------------------------------------------------------------------------
# Same users/items; item I9 is reviewed by everyone but has no metadata record (the recipe drops
# it before the 5-core); I1's metadata record is duplicated (the first one is kept).
def amazon2018_raw(d: Path, category: str = "Fix") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rows = list(REVIEWS_2014) + [(u, "I9", 700) for u in ("UA", "UB", "UC", "UD", "UE")]
    write_gz_lines(d / f"{category}_5.json.gz", [
        json.dumps({"overall": 4.0, "verified": True, "reviewerID": u, "asin": i, "unixReviewTime": t}) for u, i, t in rows])
    meta = [
        {"asin": "I1", "title": "Shampoo Deluxe", "brand": "Brandy", "category": ["Beauty", "Hair Care"],
         "description": ["Washes.", "Rinses."], "main_cat": "Beauty"},
        {"asin": "I1", "title": "DUPLICATE", "brand": "", "category": [], "description": []},
        {"asin": "I2", "brand": "B2", "category": ["Beauty"], "description": []},
        {"asin": "I3", "title": "Lotion\nfor hands", "category": ["Beauty", "Skin"]},
        {"asin": "I4", "title": "L'Oréal Crème", "brand": "L'Oréal", "category": ["Beauty"]},
        {"asin": "I5", "title": "Soap", "category": ["Beauty"], "description": ["Clean."]},
        {"asin": "I6", "title": "Dropped", "category": []},
    ]
    write_gz_lines(d / f"meta_{category}.json.gz", [json.dumps(m, ensure_ascii=False) for m in meta])
    return d


# --- LETTER / LC-Rec layout --------------------------------------------------------------------
LETTER_INTER = {"0": [0, 1, 2, 3, 4], "1": [2, 1, 1, 0, 3], "2": [4, 3, 2, 1, 0]}
LETTER_ITEMS = {
    "0": {"title": "Alpha.", "description": "First\nitem."},
    "1": {"description": "No title here."},
    "2": {"title": "\"Quoted\" start", "description": ""},
    "3": {"title": "Delta.", "description": "Fourth."},
    "4": {"title": "Epsilon.", "description": "Fifth."},
}
LETTER_INDEX = {str(i): [f"<a_{i % 2}>", f"<b_{i}>", f"<c_{7 - i}>", "<d_0>"] for i in range(5)}


def letter_raw(d: Path, name: str = "Fix", items: dict | None = None, index: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.inter.json").write_text(json.dumps(LETTER_INTER, indent=4))
    if items is not False:
        (d / f"{name}.item.json").write_text(json.dumps(LETTER_ITEMS if items is None else items, indent=1))
    if index is not False:
        (d / f"{name}.index.json").write_text(json.dumps(LETTER_INDEX if index is None else index))
    return d


# --- P5 layout ---------------------------------------------------------------------------------
def p5_raw(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "sequential_data.txt").write_text("1 1 2 3 4\n2 3 2 1\n\n3 4 4 1 2\n")
    (d / "datamaps.json").write_text(json.dumps({
        "user2id": {"RA": "1", "RB": "2", "RC": "3"}, "id2user": {"1": "RA", "2": "RB", "3": "RC"},
        "item2id": {"A1": "1", "A2": "2", "A3": "3", "A4": "4"},
        "id2item": {"1": "A1", "2": "A2", "3": "A3", "4": "A4"}}))
    return d


# --- MovieLens-1M ------------------------------------------------------------------------------
MOVIES_DAT = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "2::Misérables, Les (1995)::Drama|Musical\n"
    "3::Grumpier Old Men (1995)::Comedy|Romance\n"
    "4::Unrated Movie (2000)::Drama\n"
)
RATINGS_DAT = (
    "1::3::4::978300760\n"
    "1::1::5::978300100\n"
    "1::2::3::978300100\n"
    "2::2::5::978000000\n"
    "2::1::1::978000005\n"
)
EXPECTED_INTER_ML = [("1", "1", "978300100"), ("1", "2", "978300100"), ("1", "3", "978300760"),
                     ("2", "2", "978000000"), ("2", "1", "978000005")]
EXPECTED_ITEMS_ML = [("1", "Toy Story (1995)", "Animation, Children's, Comedy"),
                     ("2", "Misérables, Les (1995)", "Drama, Musical"),
                     ("3", "Grumpier Old Men (1995)", "Comedy, Romance")]


def movielens_raw(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "movies.dat").write_bytes(MOVIES_DAT.encode("latin-1"))
    (d / "ratings.dat").write_bytes(RATINGS_DAT.encode("latin-1"))
    (d / "ml-1m.user_sequences.txt").write_text("1 1 2 3\n2 2 1\n")
    with open(d / "dataset.pkl", "wb") as f:
        pickle.dump({"umap": {1: 0, 2: 1}, "smap": {1: 1, 2: 2, 3: 3},
                     "train": {0: [1], 1: [2]}, "val": {0: [2], 1: []}, "test": {0: [3], 1: [1]}}, f)
    return d


def read_rows(path: Path) -> tuple[list[str], list[tuple[str, ...]]]:
    """Header and rows of an atomic file, decoded the way RecBole/pandas decode them."""
    from diger.data.atomic import read_atomic

    fields, rows = read_atomic(path)
    return [f"{n}:{t}" for n, t in fields], [tuple(r) for r in rows]
