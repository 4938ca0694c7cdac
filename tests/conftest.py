import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def toy_root(tmp_path, monkeypatch):
    """A temp dir holding the synthetic ``toy`` dataset; the test runs inside it (RecBole writes ./log)."""
    from genrec_fixtures import write_dataset

    write_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIGER_CACHE", str(tmp_path / "cache"))
    return tmp_path
