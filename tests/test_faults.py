"""Faults a hostile or unlucky user meets, on real tiny runs: two writers on one run, damaged
checkpoints, a full disk, out of memory, and stopping by SIGTERM / SIGINT / the stop file.

Processes that must die or hold a lock are forked from this one (torch already imported, one
thread), so each costs milliseconds instead of a fresh interpreter's import of torch.
"""

import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slm_core.cli import main as slm
from slm_core.config import load_recipe
from slm_core.errors import SLMError
from slm_core.models.load import load_model
from slm_core.run import runs
from slm_core.run.lock import RunLock, holder
from slm_core.run.manifest import CheckpointWarning, find_checkpoint, last_good_step, step_of
from slm_core.train.loop import train

FORK = multiprocessing.get_context("fork")
# A 1-layer, 32-wide model on a character vocabulary: a step takes milliseconds.
TINY = ["data.source=builtin", "data.max_chars=50000", "tokenizer.kind=char", "model.vocab_size=null",
        "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.n_kv_head=2", "model.d_ff=64",
        "model.context_length=32", "train.batch_size=4", "train.precision=fp32", "train.eval_batches=1",
        "train.sample_prompts=[]", "train.warmup_steps=1", "train.device=cpu"]


def tiny(steps: int, ckpt: int = 2, *extra: str):
    return load_recipe("quickstart-cpu", TINY + [f"train.max_steps={steps}", f"train.eval_interval={steps}",
                                                 f"train.ckpt_interval={ckpt}", *extra])


def snapshot(run_dir: Path) -> dict:
    """Every file under the run with its size and mtime: 'nothing changed' means this is equal."""
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def train_steps(rows) -> list[int]:
    return [r["step"] for r in rows if r.get("kind") == "train"]


def _in_child(fn, *args):
    """Run fn(*args) in a forked process with one thread; exit code 0 on return, 3 on an exception."""
    def target():
        torch.set_num_threads(1)
        try:
            fn(*args)
        except BaseException as error:  # noqa: BLE001 - reported through the exit code and a file
            Path(args[0]).parent.joinpath("child-error.txt").write_text(f"{type(error).__name__}: {error}")
            os._exit(3)
    proc = FORK.Process(target=target)
    proc.start()
    return proc


def _wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 8-step run with checkpoints latest (8), latest.prev (6) and best; copied per test."""
    run_dir = tmp_path_factory.mktemp("faults") / "base"
    train(tiny(8, 2), run_dir, progress=False)
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target


# ---- two writers -------------------------------------------------------------------------------

def _hold_lock(run_dir):
    """Hold the run's lock until killed (or orphaned: a test process that died takes it down too)."""
    parent = os.getppid()
    with RunLock(run_dir):
        Path(run_dir, "held").touch()
        while os.getppid() == parent:
            time.sleep(0.05)


def test_second_writer_is_refused_naming_the_first_and_changes_nothing(run_copy):
    before = snapshot(run_copy)
    other = _in_child(_hold_lock, run_copy)
    try:
        _wait_for(lambda: (run_copy / "held").exists(), what="the other writer")
        (run_copy / "held").unlink()
        before = snapshot(run_copy)
        with pytest.raises(SLMError, match=rf"being written by pid {other.pid} on "):
            train(tiny(12, 2), run_copy, resume=True, progress=False)
        assert slm(["resume", str(run_copy), "--quiet"]) == 2  # the CLI: one line, exit 2
        assert snapshot(run_copy) == before
        # The Studio's view: a run some other process holds is running, whatever status.json says.
        assert runs.read_status(run_copy)["state"] == "running"
        assert runs.run_summary(run_copy)["state"] == "running"
        from studio.runner import Runner

        assert Runner(run_copy.parent).active() == run_copy.name  # the Studio will not start a second run
    finally:
        os.kill(other.pid, signal.SIGKILL)
        other.join(10)
    # The holder died: its lock went with it, and the next writer takes the run over.
    assert holder(run_copy) is None and runs.read_status(run_copy)["state"] == "finished"
    assert train(tiny(10, 2), run_copy, resume=True, progress=False)["step"] == 10


def test_two_cli_trains_with_one_name_second_refused(tmp_path, capsys):
    """`slm train --name X` while another process is already writing X (before its status exists)."""
    other = _in_child(_hold_lock, tmp_path / "X")
    try:
        _wait_for(lambda: (tmp_path / "X" / "held").exists(), what="the other writer")
        args = ["train", "--preset", "quickstart-cpu", "--name", "X", "--runs-dir", str(tmp_path), "--quiet"]
        assert slm(args + [x for o in TINY for x in ("--set", o)]) == 2
        err = capsys.readouterr().err
        assert f"being written by pid {other.pid}" in err and "Traceback" not in err, err
        assert sorted(p.name for p in (tmp_path / "X").iterdir()) == ["held", "run.lock"]
    finally:
        os.kill(other.pid, signal.SIGKILL)
        other.join(10)


def test_fresh_train_into_an_existing_run_is_refused(run_copy):
    before = snapshot(run_copy)
    with pytest.raises(SLMError, match="already holds a run"):
        train(tiny(8, 2), run_copy, progress=False)
    assert snapshot(run_copy) == before


def test_a_killed_writer_reads_as_failed_not_running(run_copy):
    runs.write_status(run_copy, state="running", pid=os.getpid())  # pid alive, but nobody holds the lock
    assert runs.read_status(run_copy)["state"] == "failed"


def _flip_a_byte(path: Path, at: int = 0) -> bytes:
    """One byte's top bit flipped: the file is no longer JSON (nor UTF-8). Returns the damaged bytes."""
    payload = bytearray(path.read_bytes())
    payload[at] ^= 0x80
    path.write_bytes(bytes(payload))
    return bytes(payload)


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_status_is_named_listed_kept_aside_and_the_run_resumes(run_copy, capsys, damage):
    status_file = run_copy / "status.json"
    if damage == "truncated":
        status_file.write_bytes(status_file.read_bytes()[:-20])
        damaged = status_file.read_bytes()
    else:
        damaged = _flip_a_byte(status_file)
    status = runs.read_status(run_copy)  # a reader: names it, offers the resume, never raises nor moves it
    assert status["state"] == "failed" and status["error"].startswith(f"damaged status: {status_file}")
    assert f"slm resume {run_copy.name}" in status["error"] and status_file.read_bytes() == damaged
    assert [r["state"] for r in runs.list_runs(run_copy.parent)] == ["failed"]
    assert slm(["runs", "--runs-dir", str(run_copy.parent)]) == 0 and "failed" in capsys.readouterr().out
    # The writer keeps it aside (byte for byte), says so in one line, and writes a fresh one.
    assert train(tiny(10, 2), run_copy, resume=True, progress=False)["step"] == 10
    warning = [line for line in capsys.readouterr().err.splitlines() if "status.json" in line]
    [aside] = run_copy.glob("status.json.damaged-*")
    assert len(warning) == 1 and aside.name in warning[0] and aside.read_bytes() == damaged
    assert runs.read_status(run_copy)["state"] == "finished"


def test_a_damaged_manifest_is_not_trusted_and_left_as_it_is(run_copy):
    manifest = run_copy / "checkpoints" / "latest" / "manifest.json"
    damaged = _flip_a_byte(manifest, at=5)
    with pytest.warns(CheckpointWarning, match=r"latest/manifest\.json is damaged"):
        assert find_checkpoint(run_copy, "latest", need_trainer_state=True).name == "latest.prev"
    assert last_good_step(run_copy) == 6 and manifest.read_bytes() == damaged


def test_a_damaged_lock_record_is_named_and_the_run_reads_as_running(run_copy):
    other = _in_child(_hold_lock, run_copy)
    try:
        _wait_for(lambda: (run_copy / "held").exists(), what="the lock holder")
        os.truncate(run_copy / "run.lock", 0)  # the record is a hint: damage it under the live lock
        (run_copy / "run.lock").write_bytes(b'{"pid": 12\x80')
        with pytest.raises(SLMError, match=r"being written by another process \(.*run\.lock names none"):
            RunLock(run_copy).acquire()
        assert runs.read_status(run_copy)["state"] == "running"
    finally:
        os.kill(other.pid, signal.SIGKILL)
        other.join()


# ---- damaged checkpoints ---------------------------------------------------------------------------

def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage", ["model.safetensors", "trainer_state.pt", "state.json", "manifest.json"])
def test_resume_skips_a_damaged_latest_and_redoes_its_steps_once(run_copy, finished_run, damage):
    latest = run_copy / "checkpoints" / "latest"
    if damage == "state.json":
        (latest / damage).write_text("")
    else:
        _truncate(latest / damage)
    with pytest.warns(CheckpointWarning, match=damage.replace(".", r"\.")):
        result = train(tiny(8, 2), run_copy, resume=True, progress=False)
    assert result["state"] == "finished" and result["step"] == 8
    # Steps 7-8 were redone from latest.prev (step 6); each appears once, with the same losses.
    assert train_steps(runs.read_metrics(run_copy)) == list(range(1, 9))
    original = load_file(str(finished_run / "checkpoints" / "latest" / "model.safetensors"))
    redone = load_file(str(latest / "model.safetensors"))
    assert all(torch.equal(original[k], redone[k]) for k in original)


def test_readers_fall_back_and_name_the_damaged_file(run_copy):
    best = run_copy / "checkpoints" / "best"
    _truncate(best / "model.safetensors")
    with pytest.warns(CheckpointWarning, match=r"best/model\.safetensors is truncated"):
        loaded = load_model(run_copy, tag="best")
    assert loaded.path.name == "latest"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        assert slm(["generate", str(run_copy), "--prompt", "Once", "--max-new-tokens", "3"]) == 0
        assert slm(["quantize", str(run_copy), "--method", "int8"]) == 0


def test_no_good_checkpoint_left_is_one_line_naming_each_file(run_copy, capsys):
    for name in ("latest", "latest.prev", "best"):
        _truncate(run_copy / "checkpoints" / name / "model.safetensors")
    for argv in (["generate", str(run_copy), "--max-new-tokens", "2"], ["quantize", str(run_copy)],
                 ["export", str(run_copy), "--out", str(run_copy.parent / "exported")],
                 ["eval", str(run_copy)], ["resume", str(run_copy)]):
        capsys.readouterr()
        assert slm(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert "model.safetensors is truncated" in err or "no checkpoint" in err, err


def test_stale_temporary_folders_are_removed_and_a_complete_one_promoted(run_copy):
    root = run_copy / "checkpoints"
    shutil.copytree(root / "latest", root / ".latest-half")
    (root / ".latest-half" / "manifest.json").unlink()  # killed mid-write
    (root / "latest").rename(root / ".latest-done")  # killed between the swap's two renames
    shutil.copytree(root / "best", root / ".trash-best-123")
    result = train(tiny(10, 2), run_copy, resume=True, progress=False)
    assert result["step"] == 10
    assert sorted(p.name for p in root.iterdir()) == ["best", "latest", "latest.prev"]
    # Resumed from the promoted step-8 checkpoint, not latest.prev (step 6): nothing redone.
    assert train_steps(runs.read_metrics(run_copy)) == list(range(1, 11))


# ---- disk full ---------------------------------------------------------------------------------------

def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_disk_stops_cleanly_and_resume_works_once_space_is_freed(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("cannot mount a small tmpfs here (needs root); the RLIMIT_FSIZE test covers the write path")
    try:
        run_dir = disk / "run"

        def fill_disk(event):  # after step 3's checkpoint, leave too little room for the next one
            if event.get("kind") == "train" and event["step"] == 3 and not (disk / "ballast").exists():
                free = shutil.disk_usage(disk).free
                (disk / "ballast").write_bytes(b"\0" * (free - 150_000))

        with pytest.raises(SLMError, match=r"needs \d+ MB free in .*; last good checkpoint: step 2"):
            train(tiny(8, 2), run_dir, progress=False, callback=fill_disk)
        status = runs.read_status(run_dir)
        assert status["state"] == "failed" and "last good checkpoint: step 2" in status["error"]
        assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
        (disk / "ballast").unlink()
        assert train(tiny(8, 2), run_dir, resume=True, progress=False)["state"] == "finished"
        assert train_steps(runs.read_metrics(run_dir)) == list(range(1, 9))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _train_until_file_limit(run_dir, limit_at_step):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, not a kill

    def limit(event):
        if event.get("kind") == "train" and event["step"] == limit_at_step:
            size = (Path(run_dir) / "checkpoints" / "latest" / "model.safetensors").stat().st_size
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10_000, resource.RLIM_INFINITY))
    train(tiny(8, 2), run_dir, progress=False, callback=limit)


def test_write_error_mid_checkpoint_is_explained_and_leaves_no_temporary_folder(tmp_path):
    """A file-size limit makes torch.save fail inside trainer_state.pt ('unexpected pos'), as a full disk does."""
    run_dir = tmp_path / "run"
    child = _in_child(_train_until_file_limit, run_dir, 3)
    child.join(120)
    assert child.exitcode == 3
    error = (tmp_path / "child-error.txt").read_text()
    assert error.startswith("DiskFullError: not enough disk space") and "last good checkpoint: step 2" in error, error
    assert "unexpected pos" not in error and "stopped short" in error, error
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "needs" in status["error"] and "MB free" in status["error"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best", "latest", "latest.prev"]
    assert train(tiny(8, 2), run_dir, resume=True, progress=False)["state"] == "finished"


# ---- out of memory -------------------------------------------------------------------------------------

def test_absurd_model_is_refused_at_once_without_allocating(tmp_path, monkeypatch):
    from slm_core.models import estimate
    from slm_core.models.model import Transformer
    from slm_core.train import loop

    built = []  # every model built on the way to the refusal: (layers, device)
    real_init = Transformer.__init__

    def recorded_init(self, config, *args, **kwargs):
        built.append((config.n_layer, torch.empty(0).device.type))
        real_init(self, config, *args, **kwargs)

    monkeypatch.setattr(Transformer, "__init__", recorded_init)
    monkeypatch.setattr(loop, "Trainer", lambda *a, **kw: pytest.fail("the trainer started"))
    monkeypatch.setattr(estimate, "_PARAM_CACHE", {})  # count afresh, so the counting is seen
    with pytest.raises(SLMError, match=r"refusing to start: training this model needs about .* settings|"
                                       r"refusing to start: .*pick a smaller model"):
        train(tiny(8, 2, "model.n_layer=100000"), tmp_path / "huge", progress=False)
    # Counted on the meta device from two identical blocks: nothing allocated, not 100,000 layers built.
    assert built and all(layers <= 2 and device == "meta" for layers, device in built), built
    assert not (tmp_path / "huge").exists()


def _train_under_memory_limit(run_dir, extra_mb, *overrides):
    vm = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra_mb * 2**20, resource.RLIM_INFINITY))
    train(tiny(4, 2, *overrides), run_dir, progress=False)


# Small weights, but a (64, 64, 100k) logits tensor: one 1.6 GB allocation in the first forward,
# so the allocator fails on a big request with the allowance's headroom still there for the message.
BIG = ("model.vocab_size=100000", "train.batch_size=64", "model.context_length=64")


@pytest.mark.parametrize("force", [False, True])
def test_out_of_memory_is_refused_or_explained_with_settings_that_fit(tmp_path, force):
    run_dir = tmp_path / "run"
    child = _in_child(_train_under_memory_limit, run_dir, 500, *BIG, f"train.force={str(force).lower()}")
    child.join(300)
    assert child.exitcode == 3
    error = (tmp_path / "child-error.txt").read_text()
    assert error.startswith("SLMError: "), error  # one line, no traceback
    if force:  # it tried, and the allocator's failure is explained
        assert "out of memory (CPU) at step 1" in error and "training this model needs about" in error, error
        assert "settings that would fit: train.batch_size=" in error, error
        assert "failed" == runs.read_status(run_dir)["state"] and "out of memory" in runs.read_status(run_dir)["error"]
    else:
        assert "refusing to start" in error and "train.force=true" in error, error


def test_resource_errors_are_recognised_and_explained():
    from slm_core.system import is_disk_full, is_out_of_memory
    from slm_core.train.preflight import explain_failure

    config = tiny(8, 2, "train.device=cuda")
    gpu = explain_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), config, 7)
    assert gpu.startswith("out of memory (GPU) at step 7: training this model needs about"), gpu
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 1638400000 bytes. Error code 12 (Cannot allocate memory)")
    assert is_out_of_memory(cpu) and is_out_of_memory(MemoryError()) and not is_disk_full(cpu)
    for error in (OSError(28, "No space left on device"), OSError(27, "File too large"),
                  RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")):
        assert is_disk_full(error) and "disk is full" in explain_failure(error, config, 3)
    assert explain_failure(ValueError("something else"), config, 3) is None
    assert explain_failure(SLMError("a user's mistake"), config, 3) is None


# ---- stopping --------------------------------------------------------------------------------------------

def _train_long(run_dir):
    train(tiny(100_000, 1000), run_dir, progress=False)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "stop file"])
def test_stop_by_signal_or_file_saves_a_checkpoint_at_the_last_step(tmp_path, how):
    run_dir = tmp_path / "run"
    child = _in_child(_train_long, run_dir)
    _wait_for(lambda: len(train_steps(runs.read_metrics(run_dir))) >= 3, what="training steps")
    if how == "stop file":
        runs.request(run_dir, "stop")
    else:
        os.kill(child.pid, getattr(signal, how))
    child.join(60)
    assert child.exitcode == 0
    status = runs.read_status(run_dir)
    assert status["state"] == "stopped"
    last = train_steps(runs.read_metrics(run_dir))[-1]
    assert step_of(find_checkpoint(run_dir, "latest", need_trainer_state=True)) == last == status["step"]
    assert holder(run_dir) is None


def test_a_learning_rate_that_breaks_validation_stops_the_run_with_one_line(tmp_path):
    """lr=1e6 (sampling on, as a real run does): the first loss that is not a number, training or validation,
    ends the run as failed with the one-line reason, never a raw torch error from sampling, and the last
    good checkpoint (the untrained baseline's) still loads."""
    run_dir = tmp_path / "lr"
    config = tiny(4, 4, "train.lr=1e6", "train.eval_interval=1", "train.sample_prompts=['Once']",
                  "train.sample_tokens=4")
    with pytest.raises(SLMError, match=r"(loss|validation loss) became nan at step \d.*resume from it"):
        train(config, run_dir, progress=False)
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "became nan" in status["error"] and "Traceback" not in status["error"]
    assert step_of(find_checkpoint(run_dir, "best")) == 0
    assert load_model(run_dir).model is not None
