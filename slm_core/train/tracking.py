"""Copies of a run's numbers for TensorBoard, Weights & Biases and trackio (SLM_TRACK picks them; a failing
writer never stops training), and the telemetry they show: MFU and bits per byte."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional

TENSORBOARD_DIR = "tensorboard"  # inside the run directory: `tensorboard --logdir RUNS` finds every run
DEFAULT_TRACKERS = "tensorboard"

# Dense peak FLOP/s by GPU name (bf16/fp16 tensor cores, fp32 without), from the vendors' data sheets.
# MFU is shown only where the device is in this table: a CPU's peak depends on clocks and vector units
# that no library reports reliably.
PEAK_FLOPS = (  # (substring of the name, bf16/fp16 peak, fp32 peak); the first match wins
    ("H200", 989e12, 67e12), ("H100 PCIe", 756e12, 51e12), ("H100", 989e12, 67e12), ("GH200", 989e12, 67e12),
    ("A100", 312e12, 19.5e12), ("A10G", 70e12, 31e12), ("A10", 125e12, 31e12), ("L40S", 362e12, 91.6e12),
    ("L40", 181e12, 90.5e12), ("L4", 121e12, 30e12), ("RTX 4090", 165e12, 82.6e12),
    ("RTX 3090", 71e12, 35.6e12), ("V100", 125e12, 15.7e12), ("T4", 65e12, 8.1e12),
)


# ---- telemetry -------------------------------------------------------------------------------

def peak_flops(device: Any, amp: bool) -> Optional[float]:
    """The device's dense peak FLOP/s for the compute dtype, or None where it is not known (CPUs)."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(torch.device(device))
    for key, half, single in PEAK_FLOPS:
        if key in name:
            return half if amp else single
    return None


def bytes_per_token(tokenizer: Any, tokens: Any, limit: int = 200_000) -> Optional[float]:
    """UTF-8 bytes per token of the validation text (its first `limit` tokens): the factor from a loss
    per token to bits per byte, which compares runs whatever their vocabularies."""
    ids = [int(t) for t in tokens[:limit]]
    if not ids:
        return None
    n_bytes = len(tokenizer.decode_bytes(ids))
    return n_bytes / len(ids) if n_bytes else None


def bits_per_byte(loss_nats: float, bytes_per_tok: Optional[float]) -> Optional[float]:
    if not bytes_per_tok or loss_nats is None or not math.isfinite(loss_nats):
        return None
    return loss_nats / math.log(2) / bytes_per_tok


# ---- writers ---------------------------------------------------------------------------------

def enabled_trackers() -> list[str]:
    raw = os.environ.get("SLM_TRACK", DEFAULT_TRACKERS).strip().lower()
    return [] if raw in ("", "none", "off") else [t.strip() for t in raw.split(",") if t.strip()]


def _scalar_items(row: dict) -> list[tuple[str, float]]:
    """The numbers of a metrics row under TensorBoard tags: train/loss, eval/val_loss, system/ram_mb."""
    kind = row.get("kind")
    out = []
    for key, value in row.items():
        if key in ("kind", "step", "event") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        group = "system" if key.startswith(("ram_", "cpu_", "gpu_")) else kind
        out.append((f"{group}/{key}", float(value)))
    return out


def _hparam_value(value: Any) -> Any:
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class Trackers:
    """The writers one run logs to (rank 0 only). Every method is a no-op when no writer is open."""

    def __init__(self, run_dir: Path, run_name: str, config: dict, resume_step: int = 0,
                 names: Optional[list[str]] = None):
        self.run_dir, self.run_name, self.config = Path(run_dir), run_name, config
        self._tb = None
        self._others: dict[str, Any] = {}  # "wandb" / "trackio" → the module (their APIs match)
        for name in names if names is not None else enabled_trackers():
            opener = {"tensorboard": self._open_tensorboard, "wandb": self._open_wandb,
                      "trackio": self._open_trackio}.get(name)
            if opener is None:
                print(f"SLM_TRACK: unknown tracker {name!r} (tensorboard, wandb, trackio)", file=sys.stderr)
                continue
            try:
                opener(resume_step)
            except ImportError:
                if name != "tensorboard" or names is not None:
                    print(f"tracking: {name} is not installed (pip install {name}); not logging to it",
                          file=sys.stderr)
            except Exception as error:  # noqa: BLE001 - a tracker never stops training
                print(f"tracking: could not open {name}: {error}", file=sys.stderr)

    @property
    def active(self) -> list[str]:
        return (["tensorboard"] if self._tb is not None else []) + list(self._others)

    def _open_tensorboard(self, resume_step: int) -> None:
        from torch.utils.tensorboard import (
            SummaryWriter,  # needs the tensorboard package
        )

        # purge_step: after a resume from step N, the steps a crashed attempt logged past N are hidden
        # (TensorBoard drops earlier-written events at steps >= purge_step).
        self._tb = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=resume_step + 1 if resume_step else None)
        if not resume_step:
            self._write_config()

    def _write_config(self) -> None:
        import yaml
        from torch.utils.tensorboard.summary import hparams

        flat = _flatten(self.config)
        hp = {k: _hparam_value(v) for k, v in flat.items()}
        # The summaries add_hparams writes, but into this run's own event file (add_hparams would open a
        # second run folder); the metric named here is the validation loss the eval rows log.
        for summary in hparams(hp, {"eval/val_loss": float("nan")}):
            self._tb.file_writer.add_summary(summary)
        text = "```yaml\n" + yaml.safe_dump(self.config, sort_keys=False) + "```"
        self._tb.add_text("config", text.replace("\n", "\n    "), 0)

    def _open_wandb(self, resume_step: int) -> None:
        # Offline unless the user chose otherwise, and in the environment before wandb starts: its usage
        # telemetry follows the mode it was set up with (init(mode="offline") alone still probes its server).
        os.environ.setdefault("WANDB_MODE", "offline")
        import wandb

        # The run's id is its name, so a resume continues the same W&B run; its files go under <run>/wandb.
        wandb.init(project=os.environ.get("WANDB_PROJECT", "slm-studio"), name=self.run_name, id=self.run_name,
                   resume="allow", config=self.config, dir=str(self.run_dir))
        self._others["wandb"] = wandb

    def _open_trackio(self, resume_step: int) -> None:
        import trackio

        # Local-first: one SQLite file per project under TRACKIO_DIR, so `trackio show` lists every run.
        local = not (os.environ.get("TRACKIO_SPACE_ID") or os.environ.get("TRACKIO_SERVER_URL"))
        with _no_hub_username() if local else contextlib.nullcontext():
            trackio.init(project=os.environ.get("TRACKIO_PROJECT", "slm-studio"), name=self.run_name,
                         config=self.config, resume="allow")
        self._others["trackio"] = trackio

    def _guard(self, name: str, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001
            print(f"tracking: {name} failed ({error}); no longer logging to it", file=sys.stderr)
            if name == "tensorboard":
                self._tb = None
            else:
                self._others.pop(name, None)

    def log(self, row: dict) -> None:
        """One metrics.jsonl row (train, eval or event)."""
        step = int(row.get("step") or 0)
        items = _scalar_items(row)
        if row.get("kind") == "event":
            # An event is a point on its own series (its step), so it lines up with the curves.
            items = [(f"events/{row.get('event')}", float(step))]
        if self._tb is not None:
            self._guard("tensorboard", lambda: [self._tb.add_scalar(tag, value, step) for tag, value in items])
        for name, module in list(self._others.items()):
            self._guard(name, module.log, dict(items), step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        """A sample (TensorBoard's Text tab); W&B and trackio get it as a string field."""
        if self._tb is not None:
            self._guard("tensorboard", self._tb.add_text, tag, text, step)
        for name, module in list(self._others.items()):
            self._guard(name, module.log, {tag: text}, step=step)

    def flush(self) -> None:
        if self._tb is not None:
            self._guard("tensorboard", self._tb.flush)

    def close(self) -> None:
        if self._tb is not None:
            self._guard("tensorboard", self._tb.close)
            self._tb = None
        for name, module in list(self._others.items()):
            self._guard(name, module.finish)
        self._others.clear()


@contextlib.contextmanager
def _no_hub_username():
    """trackio's Run asks the Hub who the user is (whoami) to note it in the run's config, even for a run
    it keeps local: with a Hugging Face token saved, a request to huggingface.co at every start. A local
    run has no use for the name, so trackio gets None (what it records when the lookup fails)."""
    import trackio.run as trackio_run

    original = getattr(trackio_run, "_get_default_namespace", None)
    if original is None:  # a trackio that no longer looks the user up this way
        yield
        return
    trackio_run._get_default_namespace = lambda: None
    try:
        yield
    finally:
        trackio_run._get_default_namespace = original


def _flatten(tree: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
    return out
