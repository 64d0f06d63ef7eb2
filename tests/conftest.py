"""Shared fixtures: isolated run/cache folders, offline environment, the real data in ../shared/data."""

import os
from pathlib import Path

import pytest
from offline import refuse_network

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# No background onnxruntime-genai export (engine choice "auto"): a build is a process on a CI core for 10-30 s;
# tests/studio/test_chat_autobuild.py turns it on.
os.environ.setdefault("SLM_BACKGROUND_EXPORT", "0")
# The engine choice is cached per machine load (quiet or busy); a suite on two loaded cores would flip between them
# from test to test. tests/test_engine_choice.py checks the two loads apart.
os.environ.setdefault("SLM_ENGINE_LOAD", "quiet")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one OpenMP thread each (and in their children), before torch is imported.
    # Two threads each would spin against each other (a 300-step training test ran 4-5x slower).
    os.environ["OMP_NUM_THREADS"] = "1"

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout (tiny Shakespeare, GPT-2 BPE files), or skip."""
    if not (SHARED_DATA / "tinyshakespeare.txt").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (it sits beside the project checkout)")
    return SHARED_DATA


@pytest.fixture
def network(monkeypatch) -> list:
    """This process offline: every name lookup or connection is refused and recorded (the returned list),
    so a test can assert that nothing was attempted."""
    attempts: list = []
    refuse_network(monkeypatch, attempts)
    return attempts


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory, monkeypatch):
    """Every test gets its own runs dir; the token cache is shared per session to avoid retokenizing."""
    monkeypatch.setenv("SLM_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
    cache = tmp_path_factory.getbasetemp() / "slm-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("SLM_CACHE_DIR", str(cache))


# A 1-layer character model, trained for 30 steps once per session: the model evaluation tests score.
TINY_CHAR_MODEL = ["tokenizer.kind=char", "data.max_chars=200000", "model.context_length=64", "model.vocab_size=null",
                   "model.n_layer=1", "train.batch_size=8", "train.precision=fp32", "train.eval_batches=2",
                   "train.sample_tokens=4", "train.warmup_steps=2", "train.lr=0.003", "train.max_steps=30",
                   "train.eval_interval=30", "train.ckpt_interval=30"]


@pytest.fixture(scope="session")
def tiny_char_run(tmp_path_factory) -> Path:
    """The run folder of a tiny character model trained on the built-in stories (do not modify it)."""
    from slm_core.config import load_recipe
    from slm_core.train.loop import train

    run_dir = tmp_path_factory.mktemp("tiny-char") / "char"
    old = os.environ.get("SLM_CACHE_DIR")
    os.environ["SLM_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "slm-cache")
    try:
        train(load_recipe("quickstart-cpu", TINY_CHAR_MODEL), run_dir, progress=False)
    finally:
        if old is None:
            os.environ.pop("SLM_CACHE_DIR", None)
        else:
            os.environ["SLM_CACHE_DIR"] = old
    return run_dir
