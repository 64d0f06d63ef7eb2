"""A tiny finished run, trained once per session through the Studio's runner (the real CLI worker)."""

import os

import pytest

from studio.runner import Runner

QUICK = ["data.max_chars=400000", "tokenizer.vocab_size=512", "model.context_length=64", "model.vocab_size=null",
         "model.n_layer=1", "train.batch_size=4", "train.precision=fp32", "train.eval_batches=2",
         "train.sample_tokens=4", "train.warmup_steps=2", "train.lr=0.003"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(runs_dir, name) of a finished 6-step run."""
    cache = tmp_path_factory.getbasetemp() / "slm-cache"  # the same token cache tests/conftest.py uses
    cache.mkdir(exist_ok=True)
    old = os.environ.get("SLM_CACHE_DIR")
    os.environ["SLM_CACHE_DIR"] = str(cache)
    try:
        runner = Runner(tmp_path_factory.mktemp("studio-runs"))
        name = runner.start("quickstart-cpu", QUICK + ["train.max_steps=6", "train.eval_interval=3",
                                                       "train.ckpt_interval=3"], name="tiny")
        assert runner.wait(240) == 0, (runner.root / name / "log.txt").read_text()[-2000:]
    finally:
        if old is None:
            os.environ.pop("SLM_CACHE_DIR", None)
        else:
            os.environ["SLM_CACHE_DIR"] = old
    return runner.root, name


@pytest.fixture(scope="session")
def copy_of_tiny_run(tiny_run):
    """copy(directory, quantize=False, export_hf=False) -> (runs_dir, name): the session's tiny run copied
    into `directory`, so a module's artifacts stay its own; optionally with int8 and HF versions beside it."""
    import shutil

    from studio import jobs

    def copy(directory, quantize: bool = False, export_hf: bool = False):
        root, name = tiny_run
        shutil.copytree(root / name, directory / name)
        if quantize:
            jobs.quantize(str(directory / name), method="int8", report=False)  # in this process: no helper
        if export_hf:
            jobs.export(str(directory / name), fmt="hf")
        return directory, name

    return copy


@pytest.fixture(scope="module")
def helper():
    """One job helper process per test module."""
    from studio.jobs import JobHelper

    helper = JobHelper()
    yield helper
    helper.close()
