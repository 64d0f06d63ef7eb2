"""The training loop end to end on real (small) data: learning, exact resume, stop, failure handling."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slm_core.config import load_recipe
from slm_core.errors import SLMError
from slm_core.models.load import load_model
from slm_core.run import runs
from slm_core.train.loop import train

REPO = Path(__file__).resolve().parents[1]

# Small enough for seconds on 2 cores, large enough to learn the built-in stories visibly.
QUICK = ["data.max_chars=400000", "tokenizer.vocab_size=512", "model.context_length=64", "model.vocab_size=null",
         "train.batch_size=8", "train.precision=fp32", "train.eval_batches=4", "train.sample_tokens=8",
         "train.warmup_steps=5", "train.lr=0.003"]


def quick_config(recipe: str, steps: int, *extra: str):
    return load_recipe(recipe, QUICK + [f"train.max_steps={steps}", f"train.eval_interval={steps}",
                                        f"train.ckpt_interval={steps}", *extra])


@pytest.mark.parametrize("recipe", ["tiny-gpt-cpu", "quickstart-cpu"])
def test_pretraining_lowers_validation_loss(recipe, tmp_path):
    config = quick_config(recipe, 40, "train.eval_interval=20", "model.n_layer=2")
    result = train(config, tmp_path / "run", progress=False)
    evals = [m for m in runs.read_metrics(tmp_path / "run") if m["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 20, 40]
    # Untrained loss is ~ln(512) = 6.2; 40 steps on the stories must take at least 1.0 nat off.
    assert evals[0]["val_loss"] - evals[-1]["val_loss"] > 1.0, evals
    assert result["state"] == "finished"
    assert runs.read_status(tmp_path / "run")["state"] == "finished"


def test_metrics_samples_and_checkpoints_are_written(tmp_path):
    run_dir = tmp_path / "run"
    events = []
    train(quick_config("quickstart-cpu", 6, "train.eval_interval=3", "model.n_layer=1"), run_dir,
          progress=False, callback=events.append)
    rows = runs.read_metrics(run_dir)
    steps = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in steps] == list(range(1, 7))
    for key in ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_sec", "elapsed_s", "eta_s", "ram_mb"):
        assert key in steps[0], key
    assert steps[-1]["tokens"] == 6 * 8 * 64
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 3, 6]
    assert all(math.isclose(e["val_ppl"], math.exp(e["val_loss"]), rel_tol=1e-6) for e in evals)
    samples = runs.read_samples(run_dir)
    assert {s["step"] for s in samples} == {0, 3, 6} and all(s["prompt"] for s in samples)
    assert {e["kind"] for e in events} >= {"train", "eval", "sample"}
    for tag in ("latest", "best"):
        ckpt = run_dir / "checkpoints" / tag
        assert (ckpt / "model.safetensors").exists() and (ckpt / "state.json").exists()
    loaded = load_model(run_dir, tag="best")
    assert loaded.tokenizer.n_vocab <= loaded.config.model.vocab_size


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_exact(tmp_path, optimizer):
    """N steps straight == N/2 steps, stop, resume, N/2 steps: same final loss to 1e-5."""
    steps = 8
    straight = tmp_path / "straight"
    opt = f"train.optimizer={optimizer}"
    train(quick_config("quickstart-cpu", steps, "model.n_layer=1", "train.eval_interval=3", opt), straight,
          progress=False)

    halves = tmp_path / "halves"

    def stop_at_half(event):
        if event.get("kind") == "train" and event["step"] == steps // 2:
            runs.request(halves, "stop")

    config = quick_config("quickstart-cpu", steps, "model.n_layer=1", "train.eval_interval=3", opt)
    first = train(config, halves, progress=False, callback=stop_at_half)
    assert first["state"] == "stopped" and first["step"] == steps // 2
    second = train(config, halves, resume=True, progress=False)
    assert second["state"] == "finished"

    losses = lambda d: [m["loss"] for m in runs.read_metrics(d) if m["kind"] == "train"]
    assert len(losses(halves)) == steps
    assert abs(losses(straight)[-1] - losses(halves)[-1]) < 1e-5
    assert losses(straight) == pytest.approx(losses(halves), abs=1e-5)


def test_nan_loss_fails_clearly_and_keeps_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    # A huge learning rate without clipping diverges to inf/NaN within a few steps.
    config = quick_config("quickstart-cpu", 200, "model.n_layer=1", "train.lr=1e6", "train.grad_clip=0",
                          "train.warmup_steps=0", "train.ckpt_interval=1", "train.eval_interval=1000")
    with pytest.raises(SLMError, match="loss became"):
        train(config, run_dir, progress=False)
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "loss became" in status["error"]
    assert status["failed_step"] >= 2
    load_model(run_dir, tag="latest")  # the last good checkpoint still loads


def test_bad_source_fails_before_training_with_message(tmp_path):
    config = quick_config("quickstart-cpu", 5, f"data.source={tmp_path / 'missing.txt'}")
    with pytest.raises(SLMError, match="missing.txt"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made: nothing left behind


@pytest.mark.slow
def test_cli_train_resume_generate_and_one_line_errors(tmp_path):
    env = {**os.environ, "SLM_RUNS_DIR": str(tmp_path)}
    args = [sys.executable, "-m", "slm_core", "train", "--preset", "quickstart-cpu", "--name", "cli", "--quiet"]
    sets = [x for item in QUICK + ["train.max_steps=4", "model.n_layer=1", "train.eval_interval=2"]
            for x in ("--set", item)]
    done = subprocess.run(args + sets, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    status = json.loads((tmp_path / "cli" / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 4

    more = subprocess.run([sys.executable, "-m", "slm_core", "resume", "cli", "--quiet", "--set", "train.max_steps=6"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert more.returncode == 0, more.stderr
    assert json.loads((tmp_path / "cli" / "status.json").read_text())["step"] == 6

    gen = subprocess.run([sys.executable, "-m", "slm_core", "generate", "cli", "--prompt", "Once",
                          "--max-new-tokens", "10", "--seed", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0 and gen.stdout.startswith("Once") and len(gen.stdout) > len("Once")

    bad = subprocess.run(args + ["--set", "train.max_steps=abc"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "train.max_steps" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_char_level_shakespeare_learns(shared_data, tmp_path):
    """nanoGPT's CPU Shakespeare-char shape on the real corpus, within 300 steps: validation loss under 2.3
    nats/char (uniform over its 65 characters is 4.17; the character unigram entropy is about 3.3). The run
    stops at the first evaluation that reaches it."""
    config = load_recipe("shakespeare-char-cpu", [
        f"data.source={shared_data / 'tinyshakespeare.txt'}", "train.max_steps=300", "train.eval_interval=50", "train.target_val_loss=2.3",
        "train.lr=0.002", "train.warmup_steps=20", "train.eval_batches=10", "train.sample_tokens=40",
        "train.batch_size=32", "train.precision=fp32"])
    result = train(config, tmp_path / "shakespeare", progress=False)
    assert result["best_val_loss"] <= 2.3, result


def test_target_val_loss_stops_the_run_and_records_why(tmp_path):
    """Muon + warmup-stable-decay train, and the run ends at the first evaluation at or under the target."""
    config = quick_config("quickstart-cpu", 30, "train.eval_interval=5", "model.n_layer=1", "train.optimizer=muon",
                          "train.schedule=wsd", "train.target_val_loss=5.5", "train.sample_prompts=[]")
    result = train(config, tmp_path / "run", progress=False)
    evals = [m for m in runs.read_metrics(tmp_path / "run") if m["kind"] == "eval"]
    assert evals[0]["val_loss"] > 5.5 and evals[-1]["val_loss"] <= 5.5 < min(e["val_loss"] for e in evals[:-1])
    assert result["step"] == evals[-1]["step"] < 30
    status = runs.read_status(tmp_path / "run")
    assert status["state"] == "finished" and status["stop_reason"] == "target_val_loss"
    assert {"eval_s", "ckpt_s", "wall_s", "share"} <= set(status["overhead"])
    events = [m for m in runs.read_metrics(tmp_path / "run") if m.get("event") == "target_reached"]
    assert [e["step"] for e in events] == [result["step"]]
