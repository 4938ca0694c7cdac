"""Amazon Review Data 2018 (J. Ni, J. Li, J. McAuley, EMNLP 2019;
https://nijianmo.github.io/amazon/index.html).

* reviews: ``<Category>_5.json.gz`` (5-core) or ``<Category>.json.gz``: JSON lines with
  ``reviewerID``, ``asin``, ``unixReviewTime``.
* metadata: ``meta_<Category>.json.gz``: JSON lines with ``asin``, ``title``, ``brand``,
  ``category`` (list of str), ``description`` (list of str), ``main_cat``. The dumps hold some
  duplicated records: the first one is kept and the count reported.

Output metadata keys: ``title``, ``brand``, ``categories`` (from ``category``), ``description``
(paragraphs joined with one space), ``main_cat``. Time is ``unixReviewTime``.
"""
from __future__ import annotations

from ..model import RawData, make_inter
from ..rawio import parse_json_object
from .amazon2014 import read_meta, read_reviews

ROLES = {"amazon2018": {"required": ["reviews"], "optional": ["meta"]}}




def _normalise(rec: dict) -> dict:
    desc = rec.get("description")
    if isinstance(desc, list):
        desc = " ".join(d for d in desc if isinstance(d, str))
    return {
        "title": rec.get("title"),
        "brand": rec.get("brand"),
        "categories": rec.get("category"),
        "description": desc,
        "main_cat": rec.get("main_cat"),
    }


def read_amazon2018(files: dict, options: dict, allow_pickle: bool = False) -> RawData:
    """Read a 2018 review dump (role ``reviews``) and optional metadata (role ``meta``)."""
    users, items, times = read_reviews(files["reviews"])
    meta, notes = None, []
    if files.get("meta"):
        raw, notes = read_meta(files["meta"], parse=parse_json_object)
        meta = {asin: _normalise(rec) for asin, rec in raw.items()}
    return RawData(inter=make_inter(users, items, times), time_kind="unix", items=meta, notes=notes)
