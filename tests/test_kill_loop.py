"""kill -9 at random moments of a small run, many times over, each followed by a resume.

Every resume must work, lose at most one checkpoint interval, leave no temporary folder behind,
keep one row per step in metrics.jsonl, and the final weights must equal, bit for bit, those of
the same run trained without interruption. A third of the kills wait for a checkpoint's
temporary folder to appear, so many land in the middle of a save.

The workers are forked from this process (torch already imported, one thread each), so a kill
and a resume cost a fraction of a second rather than a fresh interpreter's start.
"""

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slm_core.config import load_recipe
from slm_core.run import runs
from slm_core.run.manifest import find_checkpoint, step_of
from slm_core.train.loop import train

FORK = multiprocessing.get_context("fork")
KILLS = 32
STEPS = 600  # long enough that 32 kills land before the end even on a quiet machine
CKPT_INTERVAL = 3
TINY = ["data.source=builtin", "data.max_chars=50000", "tokenizer.kind=char", "model.vocab_size=null",
        "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.n_kv_head=2", "model.d_ff=64",
        "model.context_length=32", "train.batch_size=4", "train.precision=fp32", "train.eval_batches=1",
        "train.sample_prompts=[]", "train.warmup_steps=1", "train.device=cpu", "model.dropout=0.1",
        f"train.max_steps={STEPS}", "train.eval_interval=25", f"train.ckpt_interval={CKPT_INTERVAL}"]


def _worker(run_dir: str, resume: bool) -> None:
    torch.set_num_threads(1)
    train(load_recipe("quickstart-cpu", TINY), run_dir, resume=resume, progress=False)


def _start(run_dir: Path, resume: bool):
    proc = FORK.Process(target=_worker, args=(str(run_dir), resume))
    proc.start()
    return proc


def _temporary(run_dir: Path) -> list[str]:
    root = run_dir / "checkpoints"
    return [p.name for p in root.iterdir() if p.name.startswith(".")] if root.is_dir() else []


def _steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in runs.read_metrics(run_dir) if r.get("kind") == "train"]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _kill_at_random_moment(proc, run_dir: Path, rng: random.Random) -> str:
    """SIGKILL the worker: at a random instant, after a few more steps, or as soon as a checkpoint is
    being written. Polls cheaply (a stat, a listdir) so the watcher does not starve the worker."""
    how = rng.choice(["any moment", "after progress", "during a save"])
    target = _size(run_dir / "metrics.jsonl") + rng.randint(0, 1500)  # a train row is ~300 bytes
    deadline = time.monotonic() + 60
    if how == "any moment":
        time.sleep(rng.uniform(0.0, 0.2))  # a quiet machine runs ~100 of these steps a second
    else:
        while time.monotonic() < deadline and proc.is_alive():
            if how == "during a save" and _temporary(run_dir):
                break
            if how == "after progress" and _size(run_dir / "metrics.jsonl") > target:
                break
            time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    return how


@pytest.mark.slow  # ~45 s of CPU on 2 cores; minutes of wall time on a loaded machine
def test_kill_minus_nine_at_random_moments_then_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_TRACK", "none")  # metrics.jsonl only: TensorBoard files are not under test here
    rng = random.Random(1234)
    reference = tmp_path / "uninterrupted"
    proc = _start(reference, resume=False)
    proc.join(600)
    assert proc.exitcode == 0

    run_dir = tmp_path / "killed"
    proc = _start(run_dir, resume=False)
    while not find_checkpoint(run_dir, "latest", need_trainer_state=True):  # resuming needs a first checkpoint
        assert proc.is_alive(), "the first worker died on its own"
        time.sleep(0.01)
    counts = {"kills": 0, "left a temporary folder": 0, "any moment": 0, "after progress": 0, "during a save": 0}
    while counts["kills"] < KILLS:
        how = _kill_at_random_moment(proc, run_dir, rng)
        if proc.exitcode == 0:
            break  # the run finished before this kill
        assert proc.exitcode == -signal.SIGKILL, f"a worker failed on its own (exit {proc.exitcode})"
        counts["kills"] += 1
        counts[how] += 1
        counts["left a temporary folder"] += bool(_temporary(run_dir))
        logged = max(_steps(run_dir), default=0)
        resumes_from = step_of(find_checkpoint(run_dir, "latest", need_trainer_state=True))
        assert logged - resumes_from <= CKPT_INTERVAL, (logged, resumes_from)
        proc = _start(run_dir, resume=True)
    proc.join(600)
    assert proc.exitcode == 0, f"the last resume failed (exit {proc.exitcode})"
    print(f"\nkill loop: {counts}")
    assert counts["kills"] >= 30, counts
    assert counts["left a temporary folder"] >= 3, counts  # kills did land inside saves

    assert _temporary(run_dir) == []
    assert runs.read_status(run_dir)["state"] == "finished"
    assert _steps(run_dir) == list(range(1, STEPS + 1))  # each step once, none missing
    ours = load_file(str(run_dir / "checkpoints" / "latest" / "model.safetensors"))
    theirs = load_file(str(reference / "checkpoints" / "latest" / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    losses = lambda d: [r["loss"] for r in runs.read_metrics(d) if r.get("kind") == "train"]
    assert losses(run_dir) == losses(reference)
