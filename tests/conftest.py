"""Fixtures shared by every test package (tests/diger, tests/softthink, tests/shared).

``tests`` and its sub-folders are packages, so pytest puts the repository root on ``sys.path`` and the tests
import their helpers as ``tests.softthink.helpers`` and ``tests.diger.data_fixtures``; the tiny datasets, models
and configs the benches also use are in :mod:`diger.testing` and :mod:`softthink.testing`.
"""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def toy_root(tmp_path, monkeypatch):
    """A temp dir holding the synthetic ``toy`` dataset; the test runs inside it (RecBole writes ./log)."""
    from diger.testing import write_dataset

    write_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIGER_CACHE", str(tmp_path / "cache"))
    return tmp_path
