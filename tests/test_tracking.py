"""slm_core.train.tracking: TensorBoard event files TensorBoard's own reader reads, a resume that hides the steps
a crashed attempt logged, bits per byte, and trackers that are optional; real runs whose every rank's
memory reaches the metrics, and whose W&B (offline) and trackio (local) records their own readers read,
with no process touching the network."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slm_core.train import tracking


class ByteTokenizer:
    """A real (if trivial) tokenizer: one token per byte."""

    def decode_bytes(self, ids):
        return bytes(ids)


def read_events(folder):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(folder), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def test_scalars_samples_and_config_land_in_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    config = {"model": {"n_layer": 2, "vocab_size": None}, "train": {"lr": 0.001, "sample_prompts": ["a", "b"]}}
    trackers = tracking.Trackers(tmp_path, "run", config, names=["tensorboard"])
    assert trackers.active == ["tensorboard"]
    for step in (1, 2, 3):
        trackers.log({"kind": "train", "step": step, "loss": 4.0 - step, "ram_mb": 100.0, "note": "text is skipped"})
    trackers.log({"kind": "eval", "step": 3, "val_loss": 1.5, "val_bpb": 0.9})
    trackers.log({"kind": "event", "event": "paused", "step": 2, "time": 1.0})
    trackers.text("samples/Once", "upon a time", 3)
    trackers.close()
    acc = read_events(tmp_path / tracking.TENSORBOARD_DIR)
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert acc.Scalars("eval/val_bpb")[0].value == pytest.approx(0.9)
    assert "system/ram_mb" in acc.Tags()["scalars"] and acc.Scalars("events/paused")[0].step == 2
    assert {"samples/Once/text_summary", "config/text_summary"} <= set(acc.Tags()["tensors"])
    assert "hparams" in acc.PluginTagToContent("hparams") or acc.PluginTagToContent("hparams")


def test_a_resume_hides_what_a_crashed_attempt_logged_past_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    first = tracking.Trackers(tmp_path, "run", {}, names=["tensorboard"])
    for step in range(1, 6):
        first.log({"kind": "train", "step": step, "loss": 10.0})
    first.close()
    again = tracking.Trackers(tmp_path, "run", {}, resume_step=3, names=["tensorboard"])
    for step in (4, 5):
        again.log({"kind": "train", "step": step, "loss": 1.0})
    again.close()
    losses = {e.step: e.value for e in read_events(tmp_path / tracking.TENSORBOARD_DIR).Scalars("train/loss")}
    assert losses == {1: 10.0, 2: 10.0, 3: 10.0, 4: 1.0, 5: 1.0}


def test_bits_per_byte_and_peak_flops():
    per_token = tracking.bytes_per_token(ByteTokenizer(), list(b"hello world"))
    assert per_token == 1.0
    assert tracking.bits_per_byte(math.log(2), 1.0) == pytest.approx(1.0)  # one bit per byte
    assert tracking.bits_per_byte(math.log(2) * 3, 3.0) == pytest.approx(1.0)  # 3 bytes per token
    assert tracking.bits_per_byte(float("nan"), 1.0) is None and tracking.bytes_per_token(ByteTokenizer(), []) is None
    assert tracking.peak_flops("cpu", amp=True) is None  # no MFU where the peak is not known


def test_trackers_are_optional(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLM_TRACK", "none")
    assert tracking.Trackers(tmp_path, "run", {}).active == []
    monkeypatch.setenv("SLM_TRACK", "tensorboard,nosuch")
    trackers = tracking.Trackers(tmp_path, "run", {})
    assert "unknown tracker 'nosuch'" in capsys.readouterr().err
    trackers.log({"kind": "train", "step": 1, "loss": 1.0})  # still works
    trackers.close()
    if importlib.util.find_spec("wandb") is None:  # (without importing it into this process)
        assert tracking.Trackers(tmp_path, "run", {}, names=["wandb"]).active == []
        assert "pip install wandb" in capsys.readouterr().err


# ---- real runs: every rank's memory, and W&B / trackio as their own readers see them ------------

# Loaded into every Python process of a run (torchrun's launcher and each rank) through PYTHONPATH: it
# refuses and records any connection or name lookup beyond this machine, and at exit records which
# tracker modules the process imported.
NETWORK_SPY = '''
import atexit, json, os, socket, sys
_log, _seen = os.environ["SLM_TEST_SPY_LOG"], []
_names = ("", "0.0.0.0", "localhost", socket.gethostname())
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

def _remote(host):
    return not (str(host).startswith(("127.", "::1")) or str(host) in _names)

def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and _remote(address[0]):
        _seen.append("connect %s:%s" % address[:2])
        raise OSError("the test forbids the network")
    return _connect(self, address)

def getaddrinfo(host, *args, **kwargs):
    if host and _remote(host.decode() if isinstance(host, bytes) else host):
        _seen.append("lookup %s" % host)
        raise socket.gaierror("the test forbids the network")
    return _getaddrinfo(host, *args, **kwargs)

socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo

@atexit.register
def _report():
    with open(_log, "a") as f:
        f.write(json.dumps({"argv": sys.argv, "network": _seen,
                            "imported": sorted(m for m in ("wandb", "trackio") if m in sys.modules)}) + "\\n")
'''
TINY = ["data.max_chars=200000", "tokenizer.vocab_size=300", "model.context_length=32", "model.n_layer=1",
        "train.batch_size=4", "train.eval_batches=2", "train.sample_tokens=4", "train.precision=fp32",
        "train.device=cpu"]


def spied_train(tmp_path, name, steps, nproc=1, track=None):
    """`slm train` (under torchrun when nproc > 1) with the network spy in every process; the run's folder
    and the spy's reports. W&B and trackio see a clean environment: their defaults are what is tested."""
    spy = tmp_path / "spy"
    spy.mkdir(exist_ok=True)
    (spy / "sitecustomize.py").write_text(NETWORK_SPY)
    # No HF_HUB_OFFLINE either: trackio imports huggingface_hub, and the product's default is what counts.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_", "TRACKIO_", "SLM_TRACK", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))}
    # Logged in to the Hub and to W&B (fake keys): whatever would then call home shows up in the spy.
    env.update(SLM_RUNS_DIR=str(tmp_path / "runs"), OMP_NUM_THREADS="1", HF_TOKEN="hf_" + "x" * 34,
               WANDB_API_KEY="x" * 40,
               SLM_TEST_SPY_LOG=str(spy / "report.jsonl"), TRACKIO_DIR=str(tmp_path / "trackio"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
               WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
               PYTHONPATH=os.pathsep.join([str(spy), str(Path(__file__).resolve().parents[1])]))
    if track:
        env["SLM_TRACK"] = track
    sets = [*TINY, f"train.max_steps={steps}", f"train.eval_interval={steps}"]
    cmd = [sys.executable, "-m", "slm_core", "train", "--preset", "quickstart-cpu", "--name", name, "--quiet",
           *(["--nproc", str(nproc)] if nproc > 1 else []), *[x for s in sets for x in ("--set", s)]]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in (spy / "report.jsonl").read_text().splitlines()]
    return tmp_path / "runs" / name, reports


def metrics_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tracked_ddp_run(tmp_path_factory):
    """One 3-step, 2-rank gloo run logging to TensorBoard, W&B and trackio (those installed)."""
    tmp = tmp_path_factory.mktemp("tracked")
    run_dir, reports = spied_train(tmp, "ddp", steps=3, nproc=2, track="tensorboard,wandb,trackio")
    return tmp, run_dir, reports


@pytest.mark.slow
def test_every_ranks_memory_reaches_the_metrics_and_tensorboard(tracked_ddp_run):
    import psutil

    _, run_dir, _ = tracked_ddp_run
    train = {r["step"]: r for r in metrics_rows(run_dir) if r["kind"] == "train"}
    assert sorted(train) == [1, 2, 3]  # one row a step, written by rank 0
    total_mb = psutil.virtual_memory().total / 2**20
    for step in (1, 3):  # gathered on the first step and the last (and every 10th between)
        rank0, rank1 = train[step]["ram_mb"], train[step]["ram_mb_rank1"]
        assert 100 < rank1 < total_mb and 100 < rank0 < total_mb  # a process holding torch and a model
        assert rank1 != rank0  # rank 1's own resident set, not rank 0's copied
    assert "ram_mb_rank1" not in train[2]  # no collective on the other steps
    assert not any(k.startswith("gpu_") for k in train[1])  # CPU run: no GPU figures, for no rank
    scalars = read_events(run_dir / tracking.TENSORBOARD_DIR)
    assert [(e.step, round(e.value, 3)) for e in scalars.Scalars("system/ram_mb_rank1")] == \
        [(s, round(train[s]["ram_mb_rank1"], 3)) for s in (1, 3)]


def test_wandb_offline_run_holds_the_runs_scalars(tracked_ddp_run):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install slm-studio[track])")
    import wandb_offline

    _, run_dir, _ = tracked_ddp_run
    files = list((run_dir / "wandb").glob("offline-run-*/run-ddp.wandb"))
    assert len(files) == 1, "W&B wrote no offline run under the run folder"
    history = wandb_offline.history(files[0])
    train = [r for r in metrics_rows(run_dir) if r["kind"] == "train"]
    logged = {r["_step"]: r for r in history}
    assert [logged[r["step"]]["train/loss"] for r in train] == pytest.approx([r["loss"] for r in train])
    assert logged[3]["system/ram_mb_rank1"] == pytest.approx(train[-1]["ram_mb_rank1"])
    assert "eval/val_loss" in logged[3] and "eval/val_loss" in logged[0]  # the baseline and the final evaluation
    assert wandb_offline.run_config(files[0])["train"]["max_steps"] == 3


def test_trackio_local_database_holds_the_runs_scalars(tracked_ddp_run):
    pytest.importorskip("trackio", reason="trackio is not installed (pip install slm-studio[track])")
    tmp, run_dir, _ = tracked_ddp_run
    # trackio reads TRACKIO_DIR when imported: ask its own storage layer in a process pointed at the run's.
    read = ("import json, trackio; from trackio.sqlite_storage import SQLiteStorage as S; "
            "print(json.dumps({'runs': S.get_runs('slm-studio'), 'logs': S.get_logs('slm-studio', 'ddp'), "
            "'config': [r.config for r in trackio.Api().runs('slm-studio')][0]}, default=str))")
    out = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TRACKIO_DIR": str(tmp / "trackio")})
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["runs"] == ["ddp"]
    losses = {r["step"]: r["train/loss"] for r in found["logs"] if "train/loss" in r}
    train = [r for r in metrics_rows(run_dir) if r["kind"] == "train"]
    assert losses == pytest.approx({r["step"]: r["loss"] for r in train})
    assert found["config"]["train"]["max_steps"] == 3


def test_trackers_never_touch_the_network(tracked_ddp_run):
    _, _, reports = tracked_ddp_run
    assert len(reports) >= 3  # torchrun and two ranks (and the `slm train` that started torchrun)
    assert [r["network"] for r in reports if r["network"]] == []
    installed = [m for m in ("trackio", "wandb") if importlib.util.find_spec(m)]
    # rank 0 alone opens the trackers (watched by the spy like every process); the other rank imports neither
    expected = [[]] * (len(reports) - 1) + [installed]
    assert sorted(r["imported"] for r in reports) == expected


def test_wandb_and_trackio_are_not_imported_unless_asked(tmp_path):
    run_dir, reports = spied_train(tmp_path, "plain", steps=1)
    assert (run_dir / tracking.TENSORBOARD_DIR).is_dir() and not (run_dir / "wandb").exists()
    assert [r["imported"] for r in reports] == [[]]
    assert [r["network"] for r in reports] == [[]]
