"""slm_core.tracking: TensorBoard event files TensorBoard's own reader reads, a resume that hides the steps
a crashed attempt logged, bits per byte, and trackers that are optional."""

import math

import pytest

from slm_core import tracking


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
    try:
        import wandb  # noqa: F401
    except ImportError:
        assert tracking.Trackers(tmp_path, "run", {}, names=["wandb"]).active == []
        assert "pip install wandb" in capsys.readouterr().err
