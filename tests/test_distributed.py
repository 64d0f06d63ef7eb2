"""torchrun launches the same entry point on several processes (gloo on CPU): rank 0 alone writes."""

import json
import os
import shutil
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_two_process_ddp_run_finishes_with_one_metrics_stream(tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    env = {**os.environ, "SLM_RUNS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    sets = ["data.max_chars=200000", "tokenizer.vocab_size=300", "model.context_length=32", "model.n_layer=1",
            "train.max_steps=3", "train.batch_size=4", "train.eval_interval=3", "train.eval_batches=2",
            "train.sample_tokens=4", "train.precision=fp32", "train.device=cpu"]
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "slm_core", "train", "--preset", "quickstart-cpu",
           "--name", "ddp", "--quiet"] + [x for s in sets for x in ("--set", s)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "ddp"
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]  # written once, by rank 0
    assert train_rows[-1]["tokens"] == 3 * 4 * 32 * 2  # both ranks' tokens counted
