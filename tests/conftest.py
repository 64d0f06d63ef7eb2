"""Shared fixtures: isolated run/cache folders, offline environment, the real data in ../shared/data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout (tiny Shakespeare, GPT-2 BPE files), or skip."""
    if not (SHARED_DATA / "tinyshakespeare.txt").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (it sits beside the project checkout)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory, monkeypatch):
    """Every test gets its own runs dir; the token cache is shared per session to avoid retokenizing."""
    monkeypatch.setenv("SLM_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
    cache = tmp_path_factory.getbasetemp() / "slm-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("SLM_CACHE_DIR", str(cache))
