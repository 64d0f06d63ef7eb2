"""torchrun launches the same entry point on several processes (gloo on CPU): rank 0 alone writes."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SMALL = ["data.max_chars=200000", "tokenizer.vocab_size=300", "model.context_length=32", "model.n_layer=1",
         "train.batch_size=4", "train.eval_batches=2", "train.sample_tokens=4", "train.precision=fp32",
         "train.device=cpu"]


def slm_train(name, steps, *sets, nproc=2):
    args = [sys.executable, "-m", "slm_core", "train", "--preset", "quickstart-cpu", "--name", name, "--quiet",
            "--nproc", str(nproc)]
    return args + [x for s in [*SMALL, f"train.max_steps={steps}", f"train.eval_interval={steps}", *sets]
                   for x in ("--set", s)]


@pytest.mark.slow
def test_nproc_launches_torchrun_and_ddp_and_fsdp_track_one_process(tmp_path):
    """`slm train --nproc 2` runs the same loop on 2 gloo ranks, with DDP and with FSDP2. Tolerance: each
    rank samples its own batches, so the curves are not bit-equal to one process with the same global
    batch (8); over the last 10 of 20 steps their mean losses agree within 0.25 nats (the loss falls
    ~2 nats over the run). Bit-level agreement of FSDP's steps is test_fsdp_steps_equal_one_process_...
    The FSDP run's checkpoint holds its shards and the consolidated weights, and resumes on 1 process."""
    env = {**os.environ, "SLM_RUNS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    # DDP through a user's own `torchrun ... -m slm_core train` (no --nproc), FSDP through --nproc 2
    by_hand = slm_train("ddp", 20)
    del by_hand[by_hand.index("--nproc"):by_hand.index("--nproc") + 2]
    by_hand = [torchrun, "--standalone", "--nproc_per_node=2"] + by_hand[1:]  # drops sys.executable
    for name, cmd in (("ddp", by_hand), ("fsdp", slm_train("fsdp", 20, "train.strategy=fsdp")),
                      ("one", slm_train("one", 20, "train.batch_size=8", nproc=1))):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads((tmp_path / name / "status.json").read_text())["state"] == "finished"

    def losses(name):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if r["kind"] == "train"], [r["tokens"] for r in rows if r["kind"] == "train"]

    (one, one_tokens) = losses("one")
    for name in ("ddp", "fsdp"):
        curve, tokens = losses(name)
        assert tokens == one_tokens  # the same global batch: both ranks' tokens counted, rows written once (rank 0)
        assert curve[0] - curve[-1] > 1.0
        assert abs(sum(curve[10:]) / 10 - sum(one[10:]) / 10) < 0.25, (name, curve, one)

    latest, best = tmp_path / "fsdp" / "checkpoints" / "latest", tmp_path / "fsdp" / "checkpoints" / "best"
    manifest = json.loads((latest / "manifest.json").read_text())["files"]
    assert "model.safetensors" in manifest and any(f.startswith("sharded/") for f in manifest)  # vouched for
    assert not (best / "sharded").exists()  # `best` serves generation and export: the weights alone
    from slm_core.models.load import load_model

    assert load_model(str(tmp_path / "fsdp")).model.num_parameters() > 0  # downstream reads model.safetensors

    # Checkpoints hold the whole state (rank 0 writes it), so the process count may change on resume, DDP's
    # and FSDP's alike: the step after the 2-process run's last continues its curve instead of restarting.
    for name in ("fsdp", "ddp"):
        more = subprocess.run([sys.executable, "-m", "slm_core", "resume", name, "--quiet", "--nproc", "1",
                               "--set", "train.max_steps=22", "--set", "train.eval_interval=22"],
                              env=env, capture_output=True, text=True, timeout=600)
        assert more.returncode == 0, more.stderr[-2000:]
        curve = {r["step"]: r["loss"] for r in (json.loads(line) for line in
                 (tmp_path / name / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"}
        assert sorted(curve) == list(range(1, 23))
        assert abs(curve[21] - curve[20]) < 0.3, (name, curve)  # restarting would jump back ~2 nats
        assert json.loads((tmp_path / name / "status.json").read_text())["state"] == "finished"


def test_fsdp_refuses_what_it_cannot_shard(tmp_path):
    env = {**os.environ, "SLM_RUNS_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    for sets, words in ((["train.optimizer=muon"], "Muon"), (["train.mode=lora", "train.init_from=x"], "LoRA")):
        done = subprocess.run(slm_train("no", 2, "train.strategy=fsdp", *sets), env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and words in done.stderr and "train.strategy=ddp" in done.stderr, done.stderr
        assert not (tmp_path / "no").exists()  # refused before torchrun started anything


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
    from slm_core.errors import SLMError
    from slm_core.train.distributed import strip_launch_flags, torchrun_command

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


def test_failure_message_names_torchruns_first_failing_rank(tmp_path):
    from slm_core.run import runs
    from slm_core.train.distributed import failure_message

    summary = ("Root Cause (first observed failure):\n[0]:\n  time      : 2026-11-29_13:47:01\n  host      : box\n"
               "  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 1234)\n  error_file: <N/A>\n"
               "  traceback : Signal 9 (SIGKILL) received by PID 1234\n")
    runs.write_status(tmp_path, state="failed", error="RuntimeError: Connection closed by peer")  # rank 0's echo
    assert failure_message(tmp_path, summary, 1).startswith("rank 1 died (Signal 9 (SIGKILL)")
    (tmp_path / "rank1.error").write_text("SLMError: the loss became nan at step 3\n")
    assert failure_message(tmp_path, summary, 1) == "rank 1 failed: SLMError: the loss became nan at step 3"
    assert failure_message(tmp_path, summary.replace(": 1 (local", ": 0 (local"), 1) == \
        "rank 0 failed: RuntimeError: Connection closed by peer"


@pytest.mark.slow  # ~20 s idle, ~40 s on a loaded machine (torchrun start-up)
def test_fsdp_steps_equal_one_process_and_checkpoints_move_between_process_counts(tmp_path):
    """FSDP2 on 2 gloo ranks (gradient checkpointing on), each on half of the global batch, takes the same
    four steps as one process on the whole batch: losses equal within 1e-5 (fp32; only the order of
    the sums differs). Its sharded checkpoint after step 2 resumes on one process, and a one-process
    checkpoint resumes on 2 sharded ranks, each continuing with the same losses at steps 3 and 4 (step 4
    shows the optimizer's moments came along: the control with a fresh optimizer misses by far more)."""
    from safetensors.torch import save_file

    from slm_core.run.checkpoint import load_weights, state_dict_for_save
    from slm_core.train import fsdp
    from slm_core.train.optim import build_optimizer

    sys.path.insert(0, os.path.dirname(__file__))
    import fsdp_steps as fs

    cpu = torch.device("cpu")
    model = fs.fresh_model()
    optimizer = build_optimizer(model, fs.TRAIN, cpu)
    reference = []
    for number, xy in enumerate(fs.batches(), start=1):
        reference.append(fs.step(model, optimizer, xy))
        if number == fs.SAVE_AFTER:
            (tmp_path / "plain").mkdir()
            save_file(state_dict_for_save(model), str(tmp_path / "plain" / "model.safetensors"))
            torch.save(optimizer.state_dict(), tmp_path / "plain" / "optimizer.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           fs.__file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads((tmp_path / "fsdp.json").read_text())
    assert got["losses"] == pytest.approx(reference, rel=1e-5)
    assert reference[0] - reference[-1] > 0.5  # it learns: equal losses are not equal constants
    assert got["from_plain"] == pytest.approx(reference[fs.SAVE_AFTER:], rel=1e-5)

    def continue_on_one_process(fresh_optimizer: bool) -> list:
        """2 → 1: the consolidated safetensors plus the optimizer's shards, gathered without a process group."""
        resumed = fs.fresh_model()
        load_weights(resumed, tmp_path / "model.safetensors")
        optimizer = build_optimizer(resumed, fs.TRAIN, cpu)
        if not fresh_optimizer:
            fsdp.load_sharded_optimizer(resumed, optimizer, tmp_path)
        return [fs.step(resumed, optimizer, xy) for xy in fs.batches()[fs.SAVE_AFTER:]]

    assert continue_on_one_process(False) == pytest.approx(reference[fs.SAVE_AFTER:], rel=1e-5)
    control = continue_on_one_process(True)
    assert abs(control[-1] - reference[-1]) > 100 * 1e-5 * reference[-1], (control, reference)


def test_a_doctored_shard_index_is_refused_without_running_it(tmp_path):
    """DCP's .metadata is a pickle: a resume reads it with an unpickler that admits only DCP's own classes."""
    import pickle

    from slm_core.errors import SLMError
    from slm_core.train import fsdp

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    (tmp_path / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(SLMError, match="posix.system|os.system|nt.system"):
        fsdp.SafeReader(str(tmp_path)).read_metadata()
    assert not (tmp_path / "ran").exists()


def test_a_shard_index_cannot_reach_a_function_through_a_dcp_module(tmp_path):
    """pickle resolves dotted names, so `<a DCP module>.os.system` would pass a check on the module alone."""

    from slm_core.errors import SLMError
    from slm_core.train import fsdp

    module = "torch.distributed.checkpoint.filesystem"
    command = f"touch {tmp_path / 'ran'}".encode()
    # GLOBAL-free protocol-4 opcodes: STACK_GLOBAL module "os.system", then call it with one argument.
    payload = (b"\x80\x04" + b"\x8c" + bytes([len(module)]) + module.encode() + b"\x8c\x09os.system\x93"
               + b"\x8c" + bytes([len(command)]) + command + b"\x85R.")
    (tmp_path / ".metadata").write_bytes(payload)
    with pytest.raises(SLMError, match="os.system"):
        fsdp.SafeReader(str(tmp_path)).read_metadata()
    assert not (tmp_path / "ran").exists()
