"""The Studio's worker glue with the real CLI: start, refuse a second run, pause/continue, stop, resume,
and runs that fail (an error in the worker, a worker killed from outside) shown as failed with a message."""

import os
import signal
import time

import pytest

from slm_core.errors import SLMError
from slm_core.run import runs
from studio import watch
from studio.plots import training_figure
from studio.runner import Runner
from studio.tabs.train import control
from studio.views import failure_note

# Tiny and fast on 2 shared cores: one layer, 64-token context, a 512-token BPE on 400k characters.
QUICK = ["data.max_chars=400000", "tokenizer.vocab_size=512", "model.context_length=64", "model.vocab_size=null",
         "model.n_layer=1", "train.batch_size=4", "train.precision=fp32", "train.eval_batches=2",
         "train.sample_tokens=4", "train.warmup_steps=2", "train.lr=0.003"]


def steps(n, every=None):
    every = every or n
    return QUICK + [f"train.max_steps={n}", f"train.eval_interval={every}", f"train.ckpt_interval={every}"]


def wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def last_step(run_dir):
    rows = [r for r in watch.metrics(run_dir) if r["kind"] == "train"]
    return rows[-1]["step"] if rows else 0


@pytest.fixture
def runner(tmp_path):
    runner = Runner(tmp_path / "runs")
    yield runner
    runner.stop_queue_worker()
    name = runner.live_name()
    if name:  # never leave a worker behind
        runner.request(name, "stop")
        if runner.wait(60) is None:
            runner.terminate(name)
            runner.wait(30)


def test_a_started_run_is_the_cli_worker_and_its_files_draw_the_curves(runner):
    name = runner.start("quickstart-cpu", steps(6, every=3), name="first")
    with pytest.raises(SLMError, match="'first' is still running"):
        runner.start("quickstart-cpu", steps(6), name="second")
    assert runner.wait(180) == 0
    run_dir = runner.root / name
    status = runs.read_status(run_dir)
    assert status["state"] == "finished" and status["step"] == 6
    log = (run_dir / "log.txt").read_text()
    assert log.startswith(f"$ slm train --preset quickstart-cpu --name first --runs-dir {runner.root} --set ")
    assert "finished: step 6" in log
    fig = training_figure(watch.metrics(run_dir))
    named = {t.name: t for t in fig.data}
    assert list(named["train loss"].x) == [1, 2, 3, 4, 5, 6] and {3, 6} <= set(named["validation loss"].x)
    assert not (runner.root / "second").exists()
    assert runner.active() is None


def test_bad_settings_are_refused_before_any_worker_starts(runner):
    with pytest.raises(SLMError, match="train.lr"):
        runner.start("quickstart-cpu", ["train.lr=-1"], name="bad")
    assert not (runner.root / "bad").exists()


@pytest.mark.slow
def test_pause_continue_stop_and_resume_to_the_end(runner):
    name = runner.start("quickstart-cpu", steps(300, every=100), name="long")
    run_dir = runner.root / name
    wait_for(lambda: last_step(run_dir) >= 2, what="the first steps")
    # The Train tab's buttons (studio.tabs.train.control) on the watched run.
    assert "Pausing" in control(runner, "pause", name)[0]
    wait_for(lambda: runs.read_status(run_dir).get("state") == "paused", what="paused")
    held = last_step(run_dir)
    time.sleep(1.5)
    assert last_step(run_dir) == held  # the worker holds, its process alive
    assert runner.live_name() == name
    # Save while paused: the worker writes it at once (not at Continue) and the button says so.
    saved = control(runner, "save", name)[0]
    assert f"Saved a checkpoint of **{name}** at step {held}" in saved
    assert runs.read_json(run_dir / "checkpoints" / "latest" / "state.json")["step"] == held
    assert runs.read_status(run_dir)["state"] == "paused"
    assert "Continuing" in control(runner, "continue", name)[0]
    wait_for(lambda: last_step(run_dir) > held, what="training to continue")
    assert "Saved a checkpoint" in control(runner, "save", name)[0]
    events = [r["event"] for r in watch.metrics(run_dir) if r["kind"] == "event"]
    assert events.index("paused") < events.index("continued")  # markers for the plots
    assert "Stopping" in control(runner, "stop", name)[0]
    assert runner.wait(120) == 0
    assert "not running" in control(runner, "pause", name)[0]
    status = runs.read_status(run_dir)
    assert status["state"] == "stopped"
    stopped_at = status["step"]
    assert runs.read_json(run_dir / "checkpoints" / "latest" / "state.json")["step"] == stopped_at
    runner.resume(name, [f"train.max_steps={stopped_at + 3}"])
    assert runner.wait(180) == 0
    status = runs.read_status(run_dir)
    assert status["state"] == "finished" and status["step"] == stopped_at + 3
    assert "$ slm resume long" in (run_dir / "log.txt").read_text()


def test_a_worker_that_errors_is_a_failed_run_with_its_message(runner, tmp_path):
    name = runner.start("quickstart-cpu", steps(5) + [f"data.source={tmp_path / 'missing.txt'}"], name="nodata")
    assert runner.wait(120) == 2
    status = runs.read_status(runner.root / name)
    assert status["state"] == "failed" and "missing.txt" in status["error"]
    assert "missing.txt" in failure_note(status)


def test_a_worker_killed_from_outside_is_a_failed_run(runner):
    name = runner.start("quickstart-cpu", steps(300, every=100), name="killed")
    run_dir = runner.root / name
    wait_for(lambda: last_step(run_dir) >= 1, what="the first step")
    os.kill(runs.read_status(run_dir)["pid"], signal.SIGKILL)  # what the kernel's OOM killer does
    assert runner.wait(30) == -signal.SIGKILL
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "SIGKILL" in status["error"] and "memory" in status["error"]
    assert "batch size" in failure_note(status)  # the out-of-memory advice
    assert runner.active() is None


@pytest.mark.slow
def test_a_queued_run_starts_when_the_running_one_ends(runner):
    """Start while busy queues; the queue worker (a thread of the Studio) starts the next run by itself."""
    first = runner.start("quickstart-cpu", steps(4), name="first")
    runner.enqueue("quickstart-cpu", steps(2), name="second")
    runner.enqueue("quickstart-cpu", steps(2), name="third")
    from slm_core.run import queue as runqueue

    runqueue.remove(runner.root, "third")  # cancelled before its turn
    assert runner.take_next() is None  # "first" holds the slot
    runner.start_queue_worker(interval_s=0.5)
    wait_for(lambda: runner.live_name() == "second", timeout=240, what="the queued run to start")
    assert runs.read_status(runner.root / first)["state"] == "finished"
    assert runner.wait(180) == 0
    assert runs.read_status(runner.root / "second")["state"] == "finished"
    assert not (runner.root / "third").exists() and runqueue.entries(runner.root) == []


@pytest.mark.slow
def test_two_processes_started_from_the_page_train_together_on_the_cpu(runner):
    """Processes = 2 and FSDP on a machine without a GPU: the worker is `slm train --nproc 2`, torchrun runs
    two gloo ranks, and the run finishes with both ranks' tokens counted and one metrics stream."""
    from studio.launch_form import launch_from

    launch, env = launch_from([2, [], 1, 0, ""])
    name = runner.start("quickstart-cpu", steps(4) + ["train.strategy=fsdp"], name="pair", launch=launch, env=env)
    assert runner.wait(300) == 0, (runner.root / name / "log.txt").read_text()[-2000:]
    run_dir = runner.root / name
    assert runs.read_status(run_dir)["state"] == "finished"
    log = (run_dir / "log.txt").read_text()
    assert log.splitlines()[0].endswith("--set train.strategy=fsdp --nproc 2")
    rows = [r for r in watch.metrics(run_dir) if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["tokens"] == 4 * 4 * 64 * 2  # steps x batch x context x 2 ranks
    assert (run_dir / "checkpoints" / "latest" / "sharded").is_dir()
