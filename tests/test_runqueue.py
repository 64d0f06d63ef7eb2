"""The run queue (slm_core.run.queue) and `slm queue`: order, cancel, the one-slot rule, and a queued run
trained by `slm queue run`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slm_core.cli import main
from slm_core.errors import SLMError
from slm_core.run import queue as runqueue
from slm_core.run import runs
from slm_core.system import pid_alive

ROOT = Path(__file__).resolve().parents[1]

TINY = ["data.max_chars=400000", "tokenizer.vocab_size=512", "model.context_length=64", "model.n_layer=1",
        "train.batch_size=4", "train.precision=fp32", "train.eval_batches=1", "train.sample_tokens=2",
        "train.warmup_steps=1", "train.max_steps=2", "train.eval_interval=2", "train.ckpt_interval=2"]


def test_queue_keeps_order_moves_and_cancels(tmp_path):
    a = runqueue.add(tmp_path, "quickstart-cpu", ["train.max_steps=5"], name="a")
    runqueue.add(tmp_path, "quickstart-cpu", [], name="b")
    runqueue.add(tmp_path, "tiny-gpt-cpu", [], name="c")
    assert a["overrides"] == ["train.max_steps=5"]
    assert [e["name"] for e in runqueue.entries(tmp_path)] == ["a", "b", "c"]
    assert runqueue.move(tmp_path, "c", 0) == 0
    assert [e["name"] for e in runqueue.entries(tmp_path)] == ["c", "a", "b"]
    runqueue.remove(tmp_path, "a")
    assert [e["name"] for e in runqueue.entries(tmp_path)] == ["c", "b"]
    with pytest.raises(SLMError, match="already exists or is queued"):
        runqueue.add(tmp_path, "quickstart-cpu", [], name="b")
    with pytest.raises(SLMError, match="train.lr"):  # settings are checked when queued, not when their turn comes
        runqueue.add(tmp_path, "quickstart-cpu", ["train.lr=-1"], name="bad")
    with pytest.raises(SLMError, match="not in the queue"):
        runqueue.remove(tmp_path, "zzz")



def test_a_damaged_queue_file_is_named_and_kept_not_overwritten(tmp_path, capsys):
    runqueue.add(tmp_path, "quickstart-cpu", [], name="a")
    runqueue.add(tmp_path, "quickstart-cpu", [], name="b")
    damaged = (tmp_path / "queue.json").read_bytes()[:-20]  # cut short: not JSON any more
    (tmp_path / "queue.json").write_bytes(damaged)
    assert main(["queue", "add", "--preset", "quickstart-cpu", "--name", "c", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "queue.json was damaged" in err and "Traceback" not in err
    [aside] = tmp_path.glob("queue.json.damaged-*")
    assert aside.name in err and aside.read_bytes() == damaged  # kept byte for byte, runs a and b readable there
    assert main(["queue", "add", "--preset", "quickstart-cpu", "--name", "c", "--runs-dir", str(tmp_path)]) == 0
    assert [e["name"] for e in runqueue.entries(tmp_path)] == ["c"]
    assert aside.read_bytes() == damaged

def test_the_next_run_is_taken_only_when_the_slot_is_free(tmp_path):
    runqueue.add(tmp_path, "quickstart-cpu", [], name="first")
    runqueue.add(tmp_path, "quickstart-cpu", [], name="second")
    runs.write_status(tmp_path / "busy", state="running", started_at=time.time())
    assert runqueue.take_next(tmp_path) is None  # a run is training
    runs.write_status(tmp_path / "busy", state="finished")
    assert runqueue.take_next(tmp_path)["name"] == "first"
    # "first" was handed to a worker that has not written its status yet: it holds the slot.
    assert runqueue.take_next(tmp_path) is None
    assert runqueue.slot_holder(tmp_path, runs.read_json(tmp_path / runqueue.QUEUE_FILE)["launching"]) == "first"
    runs.write_status(tmp_path / "first", state="finished")
    assert runqueue.take_next(tmp_path)["name"] == "second" and runqueue.entries(tmp_path) == []


@pytest.mark.slow
def test_slm_queue_from_a_shell(tmp_path, capsys):
    root = str(tmp_path)
    assert main(["queue", "add", "--preset", "quickstart-cpu", "--name", "q1", "--runs-dir", root,
                 *sum((["--set", o] for o in TINY), [])]) == 0
    assert main(["queue", "--runs-dir", root]) == 0
    assert "q1" in capsys.readouterr().out
    assert main(["queue", "remove", "nope", "--runs-dir", root]) == 2
    assert main(["queue", "run", "--runs-dir", root]) == 0
    assert runs.read_status(tmp_path / "q1")["state"] == "finished"
    assert "finished: step 2" in (tmp_path / "q1" / "log.txt").read_text()
    assert runqueue.entries(root) == []


def _wait_for(predicate, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_run_killed_with_its_queue_runner_is_failed_in_its_own_status_and_offered_for_resume(tmp_path):
    """`slm queue run` and the run it started killed together (kill -9 of the process group, as a closed terminal
    does): the run's own status.json says failed, naming the queue runner and the resume, not "running" forever."""
    endless = [o for o in TINY if not o.startswith(("train.max_steps", "train.eval_interval", "train.ckpt_interval"))]
    runqueue.add(tmp_path, "quickstart-cpu", endless + ["train.max_steps=100000", "train.eval_interval=1000",
                                                        "train.ckpt_interval=2"], name="q1")
    runner = subprocess.Popen([sys.executable, "-m", "slm_core", "queue", "run", "--runs-dir", str(tmp_path)],
                              cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "q1"
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "latest" / "state.json").exists(), "q1's first checkpoint")
        live = runs.read_status(run_dir)
        assert live["state"] == "running" and live["queue_runner"] == runner.pid
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    # The worker's lock goes with its last thread, which may outlive its main thread (a zombie) by a moment.
    _wait_for(lambda: not pid_alive(live["pid"]) and runs.read_status(run_dir)["state"] != "running", "the worker's end")
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "queue runner" in status["error"] and "slm resume q1" in status["error"], status
    on_disk = json.loads((run_dir / "status.json").read_text())  # its own file, for every reader
    assert on_disk["state"] == "failed" and on_disk["error"] == status["error"]
    assert [r["state"] for r in runs.list_runs(tmp_path)] == ["failed"]
    assert runqueue.slot_holder(tmp_path, runs.read_json(tmp_path / runqueue.QUEUE_FILE)["launching"]) is None
    step = on_disk["step"]
    assert main(["resume", "q1", "--runs-dir", str(tmp_path), "--quiet", "--set", f"train.max_steps={step + 2}"]) == 0
    assert runs.read_status(run_dir)["state"] == "finished"
