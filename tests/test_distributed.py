"""torchrun launches the same entry point on several processes (gloo on CPU): rank 0 alone writes."""

import json
import os
import shutil
import subprocess
import sys
import time

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


SMALL = ["data.max_chars=200000", "tokenizer.vocab_size=300", "model.context_length=32", "model.n_layer=1",
         "train.batch_size=4", "train.eval_batches=2", "train.sample_tokens=4", "train.precision=fp32",
         "train.device=cpu"]


def slm_train(name, steps, *sets, nproc=2):
    args = [sys.executable, "-m", "slm_core", "train", "--preset", "quickstart-cpu", "--name", name, "--quiet",
            "--nproc", str(nproc)]
    return args + [x for s in [*SMALL, f"train.max_steps={steps}", f"train.eval_interval={steps}", *sets]
                   for x in ("--set", s)]


@pytest.mark.slow
def test_nproc_launches_torchrun_and_ddp_tracks_one_process(tmp_path):
    """`slm train --nproc 2` runs the same loop on 2 gloo ranks. Tolerance: each rank samples its own
    batches, so the curves are not bit-equal to one process with the same global batch (8); over the
    last 10 of 20 steps their mean losses agree within 0.25 nats (the loss falls ~2 nats over the run)."""
    env = {**os.environ, "SLM_RUNS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(slm_train("ddp", 20), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    single = subprocess.run(slm_train("one", 20, "train.batch_size=8", nproc=1), env=env, capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]

    def losses(name):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if r["kind"] == "train"], [r["tokens"] for r in rows if r["kind"] == "train"]

    (ddp, ddp_tokens), (one, one_tokens) = losses("ddp"), losses("one")
    assert ddp_tokens == one_tokens  # the same global batch
    assert json.loads((tmp_path / "ddp" / "status.json").read_text())["state"] == "finished"
    assert ddp[0] - ddp[-1] > 1.0
    assert abs(sum(ddp[10:]) / 10 - sum(one[10:]) / 10) < 0.25, (ddp, one)


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_with_its_cause(tmp_path):
    import psutil

    env = {**os.environ, "SLM_RUNS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = subprocess.Popen(slm_train("dies", 100000), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "dies" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and '"kind": "train"' in metrics.read_text()):
        assert launcher.poll() is None and time.time() < deadline, "the run did not start"
        time.sleep(0.5)
    ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True)
             if p.environ().get("RANK") == "1" and "slm_core" in " ".join(p.cmdline())]
    assert len(ranks) == 1
    ranks[0].kill()
    _, stderr = launcher.communicate(timeout=180)
    assert launcher.returncode != 0
    status = json.loads((tmp_path / "dies" / "status.json").read_text())
    assert status["state"] == "failed" and "rank 1" in status["error"], status
    assert "rank 1" in stderr


def test_torchrun_command_for_one_machine_and_several():
    from slm_core.distributed import strip_launch_flags, torchrun_command
    from slm_core.errors import SLMError

    argv = ["train", "--nproc", "4", "--preset", "x", "--nnodes=2", "--node-rank", "1", "--rdzv-endpoint", "h:29500",
            "--set", "train.lr=1e-3"]
    assert strip_launch_flags(argv) == ["train", "--preset", "x", "--set", "train.lr=1e-3"]
    one = torchrun_command(["train"], 2)
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "-m", "slm_core", "train"]
    many = torchrun_command(["train"], 8, nnodes=2, node_rank=1, rdzv_endpoint="node0:29500")
    assert {"--nnodes=2", "--node-rank=1", "--rdzv-endpoint=node0:29500", "--rdzv-backend=c10d"} <= set(many)
    with pytest.raises(SLMError, match="rdzv-endpoint"):
        torchrun_command(["train"], 8, nnodes=2)
    with pytest.raises(SLMError, match="node-rank"):
        torchrun_command(["train"], 8, nnodes=2, node_rank=2, rdzv_endpoint="h:1")


@pytest.mark.slow
def test_a_two_process_run_resumes_on_one_process(tmp_path):
    """Checkpoints hold the whole state (rank 0 writes it), so the process count may change on resume:
    the step after a 2-process run's last continues its curve (within 0.3 nats) instead of restarting."""
    env = {**os.environ, "SLM_RUNS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(slm_train("moves", 12), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    more = subprocess.run([sys.executable, "-m", "slm_core", "resume", "moves", "--quiet", "--nproc", "1",
                           "--set", "train.max_steps=14", "--set", "train.eval_interval=14"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert more.returncode == 0, more.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "moves" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}
    assert sorted(losses) == list(range(1, 15))
    assert losses[13] < losses[1] - 1.0 and abs(losses[13] - losses[12]) < 0.3, losses
    assert json.loads((tmp_path / "moves" / "status.json").read_text())["state"] == "finished"


def test_failure_message_names_torchruns_first_failing_rank(tmp_path):
    from slm_core import runs
    from slm_core.distributed import failure_message

    summary = ("Root Cause (first observed failure):\n[0]:\n  time      : 2026-11-29_13:47:01\n  host      : box\n"
               "  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 1234)\n  error_file: <N/A>\n"
               "  traceback : Signal 9 (SIGKILL) received by PID 1234\n")
    runs.write_status(tmp_path, state="failed", error="RuntimeError: Connection closed by peer")  # rank 0's echo
    assert failure_message(tmp_path, summary, 1).startswith("rank 1 died (Signal 9 (SIGKILL)")
    (tmp_path / "rank1.error").write_text("SLMError: the loss became nan at step 3\n")
    assert failure_message(tmp_path, summary, 1) == "rank 1 failed: SLMError: the loss became nan at step 3"
    assert failure_message(tmp_path, summary.replace(": 1 (local", ": 0 (local"), 1) == \
        "rank 0 failed: RuntimeError: Connection closed by peer"
