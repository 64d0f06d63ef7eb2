"""The one training loop, for every mode (modes.py builds the model and the loss). Rank-aware: under
torchrun each rank samples its own slice, and only rank 0 writes metrics and checkpoints."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from slm_core.config import RunConfig
from slm_core.errors import SLMError
from slm_core.infer.generate import complete
from slm_core.models.estimate import flops_per_token
from slm_core.models.load import LoadedModel
from slm_core.models.lora import load_adapter_weights, save_adapter
from slm_core.run import runs
from slm_core.run.checkpoint import (
    copy_checkpoint,
    load_trainer_state,
    load_weights,
    save_checkpoint,
)
from slm_core.run.lock import RunLock
from slm_core.run.manifest import clean_stale, find_checkpoint
from slm_core.system import cpu_has_native_bf16
from slm_core.train import fsdp, tracking
from slm_core.train.chain import resolve_start
from slm_core.train.distributed import write_rank_error
from slm_core.train.fsdp import whole_copy
from slm_core.train.modes import build_for_mode
from slm_core.train.monitor import gather_rank_memory, process_sample, rank_memory_due
from slm_core.train.optim import build_optimizer, lr_at, set_lr
from slm_core.train.preflight import explain_failure, preflight_train
from slm_core.train.preflight import preflight as preflight_memory
from slm_core.train.tracking import Trackers, bits_per_byte


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class LoopState:
    step: int = 0
    tokens: int = 0
    best_val_loss: float = math.inf
    best_step: Optional[int] = None
    evals_since_best: int = 0
    elapsed_s: float = 0.0  # training time across resumes
    last_val_loss: float = math.inf
    # seconds this session spent outside training steps (eval_s, sample_s, ckpt_s): kept a small share
    overhead: dict = field(default_factory=dict)
    stop_reason: Optional[str] = None
    signals: list = field(default_factory=list)


def init_distributed(device_pref: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    import torch.distributed as dist

    # On GPUs NCCL carries the gradients; gloo beside it carries the small CPU tensors (stop/pause flags).
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and device_pref != "cpu" else "gloo"
    dist.init_process_group(backend)
    return Dist(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(pref: str, dist_env: Dist) -> torch.device:
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_env.local_rank)
        return torch.device("cpu")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise SLMError(f"train.device={pref!r} but no CUDA GPU is available; use train.device=cpu or auto")
    return torch.device(pref)


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for fp32. 'auto': bf16 where the hardware runs it natively."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise SLMError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on this device")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On CPU only where bf16 matrix multiplies are native (AVX-512 BF16 / AMX); elsewhere it is slower.
    return torch.bfloat16 if cpu_has_native_bf16() else None


def cross_entropy_loss(model, x, y):
    logits = model(x)
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-100)
    return loss, {}


class Trainer:
    """Owns one run: builds everything from the config, runs steps, evaluates, checkpoints."""

    def __init__(self, config: RunConfig, run_dir: Path, callback: Optional[Callable[[dict], None]] = None,
                 resume: bool = False, progress: bool = True):
        self.run_dir, self.callback, self.progress = Path(run_dir), callback, progress
        self.dist = init_distributed(config.train.device)
        self.device = resolve_device(config.train.device, self.dist)
        self.amp_dtype = resolve_precision(config.train.precision, self.device)
        self.state = LoopState()
        self.restored = False
        # Opened by run() (_open_trackers); until then nothing is tracked and no telemetry is known.
        self.trackers = Trackers(self.run_dir, self.run_dir.name, {}, names=[])
        self.bytes_per_token, self.peak_flops, self.flops_per_token = None, None, 0.0
        torch.manual_seed(config.train.seed + self.dist.rank)
        built = build_for_mode(config, self.run_dir, self.device, resume=resume, progress=progress)
        self.config, self.data, self.model, self.tokenizer = built.config, built.data, built.model, built.tokenizer
        self.loss_fn = built.loss_fn or cross_entropy_loss
        self.batch_fn = built.batch_fn
        self.parent = built.parent
        self.raw_model = self.model

        fsdp.check_supported(self.config, self.dist.world_size)
        self.fsdp = fsdp.uses_fsdp(self.config, self.dist.world_size)
        if self.fsdp:  # in place: raw_model is now the sharded model (its parameters are DTensors)
            self.model = fsdp.shard(self.model, self.device, self.amp_dtype)
        elif self.dist.world_size > 1:
            # gradient_as_bucket_view: gradients live in DDP's all-reduce buckets instead of beside them,
            # saving one gradient-sized copy per process (so the single-process memory estimate holds)
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True)
        if self.config.train.compile:
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(self.raw_model, self.config.train, self.device)
        self.trainable = [p for p in self.raw_model.parameters() if p.requires_grad]
        self._saved_at: Optional[int] = None  # the step of the last checkpoint written this session
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.sampler = torch.Generator().manual_seed(self.config.train.seed * 1000 + self.dist.rank)
        if resume:
            self._restore()

    # ---- one optimizer step ----------------------------------------------------------------

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self) -> dict:
        """One optimizer step. The loss, grad norm and extras stay on the device until one transfer at
        the end: a `.item()` per micro-batch would make the host wait for the GPU each time."""
        cfg = self.config.train
        self.model.train()
        lr = lr_at(self.state.step + 1, cfg)
        set_lr(self.optimizer, lr)
        total_loss, extras_sum = torch.zeros((), device=self.device), {}
        for micro in range(cfg.grad_accum):
            x, y = self._next_batch(cfg)
            last = micro == cfg.grad_accum - 1
            with self._grad_sync(last), self.autocast():
                loss, extras = self.loss_fn(self.model, x, y)
            scaled = loss / cfg.grad_accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total_loss += scaled.detach().float()
            for key, value in extras.items():
                value = torch.as_tensor(value, device=self.device).detach().float() / cfg.grad_accum
                extras_sum[key] = extras_sum.get(key, 0.0) + value
        grad_norm = self._clip_and_step(cfg)
        self.optimizer.zero_grad(set_to_none=True)
        # the one host sync of the step (it also waits for the optimizer, so step timing is honest)
        values = torch.stack([total_loss, grad_norm, *extras_sum.values()]).tolist()
        tokens = cfg.batch_size * cfg.grad_accum * self.config.model.context_length * self.dist.world_size
        return {"loss": values[0], "lr": lr, "grad_norm": values[1], "step_tokens": tokens,
                **dict(zip(extras_sum, values[2:]))}

    def _next_batch(self, cfg):
        if self.batch_fn is not None:  # GRPO samples its own batch (prompts, completions, rewards) on the device
            return self.batch_fn(self.raw_model, self.sampler, self.state.step + 1)
        x, y = self.data.get_batch("train", cfg.batch_size, self.config.model.context_length, self.sampler,
                                   rank=self.dist.rank, world_size=self.dist.world_size)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _grad_sync(self, last_micro: bool):
        """DDP all-reduces on the last micro-batch only. FSDP2 reduce-scatters every micro-batch: skipping it
        would accumulate unsharded gradients, a full model's worth per rank, which is what FSDP is to avoid."""
        if self.dist.world_size == 1 or last_micro or self.fsdp:
            if hasattr(self.model, "set_requires_gradient_sync"):
                self.model.set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2's module
            self.model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _clip_and_step(self, cfg) -> torch.Tensor:
        optimizers = getattr(self.optimizer, "optimizers", [self.optimizer])
        if self.scaler:
            for opt in optimizers:
                self.scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor norm, the same on every rank
            grad_norm = grad_norm.full_tensor()
        if self.scaler:
            for opt in optimizers:
                self.scaler.step(opt)
            self.scaler.update()
        else:
            self.optimizer.step()
        return grad_norm.detach().float().to(self.device)

    # ---- evaluation and samples ------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float:
        cfg = self.config.train
        self.raw_model.eval()
        self.eval_extras = {}
        if hasattr(self.loss_fn, "evaluate"):  # a mode that scores held-out data its own way (DPO/ORPO: pairs)
            figures = self.loss_fn.evaluate(self.raw_model, self.data, cfg.batch_size, self.config.model.context_length,
                                            cfg.eval_batches * cfg.batch_size, self.autocast)
            self.eval_extras = {k: v for k, v in figures.items() if k != "val_loss"}
            return figures["val_loss"]
        generator = torch.Generator().manual_seed(cfg.seed + 7)  # the same batches at every evaluation
        losses = []
        for _ in range(cfg.eval_batches):
            x, y = self.data.get_batch("val", cfg.batch_size, self.config.model.context_length, generator)
            with self.autocast():
                logits = self.raw_model(x.to(self.device))
            losses.append(F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.to(self.device).view(-1),
                                          ignore_index=-100).item())
        return sum(losses) / len(losses)

    def write_samples(self) -> None:
        model, autocast = self.raw_model, self.autocast
        if self.fsdp:  # every rank gives its shards; rank 0 samples from a whole copy (on the CPU, beside the GPU)
            model, autocast = whole_copy(self.raw_model), contextlib.nullcontext
            if not self.dist.is_main:
                return
        loaded = LoadedModel(model, self.tokenizer, self.config, self.run_dir, template=self.config.data.template)
        for prompt in self.config.train.sample_prompts:
            with autocast():
                text = complete(loaded, prompt, max_new_tokens=self.config.train.sample_tokens,
                                temperature=0.8, top_k=50, seed=self.config.train.seed)
            row = {"step": self.state.step, "prompt": prompt, "text": text}
            runs.append_jsonl(self.run_dir / "samples.jsonl", row)
            self.trackers.text(f"samples/{prompt[:40]}", text, self.state.step)
            self._emit({"kind": "sample", **row})
        self.raw_model.train()

    # ---- checkpoints -----------------------------------------------------------------------

    def save(self, tag: str = "latest", asked: bool = False) -> None:
        if not (self.dist.is_main or self.fsdp):  # under FSDP every rank writes its shards
            return
        s = self.state
        self._saved_at = s.step
        trainer_state = {
            "optimizer": None if self.fsdp else self.optimizer.state_dict(),  # FSDP: in the shards
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "torch_rng": torch.get_rng_state(),
            "sampler_rng": self.sampler.get_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.empty(0),
        }
        meta = {"step": s.step, "tokens": s.tokens, "best_val_loss": _finite(s.best_val_loss),
                "best_step": s.best_step, "evals_since_best": s.evals_since_best, "elapsed_s": s.elapsed_s}
        with self._timed("ckpt_s"):
            if self.fsdp:
                fsdp.save_checkpoint(self.run_dir / "checkpoints", tag, self.raw_model, self.optimizer, self.config,
                                     self.run_dir / "tokenizer", meta, trainer_state)
            else:
                save_checkpoint(self.run_dir / "checkpoints", tag, self.raw_model, self.config,
                                self.run_dir / "tokenizer", meta, trainer_state, write_adapter=self._write_adapter)
        self._event("checkpoint", tag=tag, **({"asked": True} if asked else {}))  # asked: Save now, not scheduled

    def _write_adapter(self, model: torch.nn.Module, folder: Path) -> None:
        save_adapter(model, folder, base=self.config.train.init_from)

    def _restore(self) -> None:
        # The newest checkpoint its manifest vouches for (a damaged one is skipped with a warning).
        ckpt = find_checkpoint(self.run_dir, "latest", need_trainer_state=True)
        if ckpt is None:
            raise SLMError(f"run '{self.run_dir.name}' has no checkpoint to resume from; start it again instead")

        saved = load_trainer_state(ckpt)
        if self.fsdp:  # written by any process count and strategy: fsdp.restore reads what it needs
            fsdp.restore(self.raw_model, self.optimizer, ckpt, saved.get("optimizer"))
        else:
            if (ckpt / "adapter").is_dir():
                load_adapter_weights(self.raw_model, ckpt / "adapter")
            else:
                load_weights(self.raw_model, ckpt / "model.safetensors")
            if saved.get("optimizer") is not None:
                self.optimizer.load_state_dict(saved["optimizer"])
            else:  # an FSDP run's checkpoint, resumed on one process or under DDP: gather its optimizer shards
                fsdp.load_sharded_optimizer(self.raw_model, self.optimizer, ckpt)
        if self.scaler and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])
        self.sampler.set_state(saved["sampler_rng"])
        if self.device.type == "cuda" and saved["cuda_rng"].numel():
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        meta = runs.read_json(ckpt / "state.json", default={})
        self.state.step, self.state.tokens = meta["step"], meta["tokens"]
        if self.dist.rank:  # the checkpoint holds rank 0's sampler: give the other ranks their own streams
            self.sampler.manual_seed(self.config.train.seed * 1000 + self.dist.rank + 7919 * self.state.step)
        best = meta.get("best_val_loss")
        self.state.best_val_loss = best if best is not None else math.inf
        self.state.best_step = meta.get("best_step")
        self.state.evals_since_best = meta.get("evals_since_best", 0)
        self.state.elapsed_s = meta.get("elapsed_s", 0.0)
        self.restored = True
        if self.dist.is_main:  # steps after the checkpoint are redone: each step keeps one row
            for name in ("metrics.jsonl", "samples.jsonl"):
                runs.drop_rows_after(self.run_dir / name, self.state.step)

    # ---- the loop ----------------------------------------------------------------------------

    def _emit(self, event: dict) -> None:
        if self.callback:
            self.callback(event)

    def _log(self, row: dict) -> None:
        if self.dist.is_main:
            runs.append_jsonl(self.run_dir / "metrics.jsonl", row)
            self.trackers.log(row)
            self._emit(row)

    def _event(self, name: str, **extra) -> None:
        """A marker on every plot (pause, continue, stop, resume, checkpoint, best): kind=event rows."""
        self._log({"kind": "event", "event": name, "step": self.state.step, "tokens": self.state.tokens,
                   "time": time.time(), **extra})

    def _open_trackers(self, resume_step: int) -> None:
        """TensorBoard (and W&B / trackio when asked for) beside metrics.jsonl; the telemetry they and
        the Studio share: bytes per validation token (for bits per byte) and the device's peak FLOP/s."""
        self.trackers = tracking.Trackers(self.run_dir, self.run_dir.name, self.config.to_dict(), resume_step,
                                          names=None if self.dist.is_main else [])
        self.bytes_per_token = tracking.bytes_per_token(self.tokenizer, self.data.tokens("val"))
        self.peak_flops = tracking.peak_flops(self.device, self.amp_dtype is not None)
        self.flops_per_token = flops_per_token(self.config.model)["train"]

    def _status(self, **fields) -> None:
        if self.dist.is_main:
            s = self.state
            runs.write_status(self.run_dir, step=s.step, tokens=s.tokens, best_val_loss=_finite(s.best_val_loss),
                              best_step=s.best_step, **fields)

    def run(self) -> dict:
        cfg = self.config.train
        self._install_signal_handlers()
        self._open_trackers(self.state.step)
        self._status(state="running", pid=os.getpid(), error=None, max_steps=cfg.max_steps,
                     mode=cfg.mode, preset=self.config.preset, parent=self.parent,
                     started_at=runs.read_status(self.run_dir).get("started_at") or time.time(),
                     bytes_per_token=self.bytes_per_token, trackers=self.trackers.active,
                     **_parameter_counts(self.raw_model))
        if self.state.step:
            self._event("resumed")
        bar = _progress_bar(self.progress and self.dist.is_main, cfg.max_steps, self.state.step)
        self._session_started = time.perf_counter()
        step_times: list[float] = []
        try:
            if self.state.step == 0 and not self.restored:  # the untrained baseline: the first point of every curve
                self._evaluate_and_track()
            while self.state.step < cfg.max_steps:
                if self._handle_requests():
                    break
                started = time.perf_counter()
                out = self.train_step()
                _check_losses(out, self.state.step + 1)
                step_s = time.perf_counter() - started
                self._after_step(out, step_s, step_times)
                bar.set_postfix(loss=f"{out['loss']:.3f}", refresh=False)  # one redraw a step: update's
                bar.update(1)
                if self._periodic() == "early_stop":
                    break
            reason = self.state.stop_reason or "finished"
            if self._saved_at != self.state.step:  # the evaluation just before may have saved this very step
                self.save("latest")
            if reason in ("stop", "signal"):
                self._event("stopped")
            if reason == "finished" and self.state.best_step is None:
                self._evaluate_and_track()
            self._status(state="stopped" if reason in ("stop", "signal") else "finished", pid=None,
                         stop_reason=reason, overhead=self._overhead_summary(), **_cuda_peak(self.device))
        except Exception as error:  # noqa: BLE001 - every failure ends as a failed run with its message
            explained = self._fail(error)
            if explained and not isinstance(error, SLMError):  # out of memory or disk: one line, no traceback
                raise SLMError(explained) from error
            raise
        finally:
            bar.close()
            self.trackers.close()
        return {"step": self.state.step, "tokens": self.state.tokens, "best_val_loss": _finite(self.state.best_val_loss),
                "state": runs.read_status(self.run_dir).get("state"), "run_dir": str(self.run_dir)}

    def _after_step(self, out: dict, step_s: float, step_times: list[float]) -> None:
        s, cfg = self.state, self.config.train
        s.step += 1
        s.tokens += out.pop("step_tokens")
        s.elapsed_s += step_s
        step_times.append(step_s)
        recent = step_times[-20:]
        avg = sum(recent) / len(recent)
        tokens_per_step = cfg.batch_size * cfg.grad_accum * self.config.model.context_length * self.dist.world_size
        row = {"kind": "train", "step": s.step, "tokens": s.tokens, **out,
               "tokens_per_sec": tokens_per_step / step_s if step_s > 0 else 0.0,
               "step_ms": round(step_s * 1000, 2),
               **({"mfu": self.flops_per_token * tokens_per_step / step_s / self.peak_flops}
                  if self.peak_flops and step_s > 0 else {}),
               "elapsed_s": round(s.elapsed_s, 3), "eta_s": round(avg * (cfg.max_steps - s.step), 1),
               **process_sample(self.device)}
        if self.dist.world_size > 1 and rank_memory_due(s.step, cfg.max_steps):
            row.update(gather_rank_memory(row, self.device))  # a collective: every rank calls it at this step
        self._log(row)
        if s.step % 10 == 0 or s.step == 1:
            self._status(state="running")

    def _periodic(self) -> Optional[str]:
        cfg, s = self.config.train, self.state
        if s.step % cfg.eval_interval == 0 or s.step == cfg.max_steps:
            self._evaluate_and_track()
            if cfg.target_val_loss is not None and s.last_val_loss <= cfg.target_val_loss:
                s.stop_reason = "target_val_loss"
                self._event("target_reached", val_loss=s.last_val_loss)
                return "early_stop"
            if cfg.early_stop_patience and s.evals_since_best >= cfg.early_stop_patience:
                s.stop_reason = "early_stop"
                return "early_stop"
        if s.step % cfg.ckpt_interval == 0 and s.step != cfg.max_steps:
            self.save("latest")
        return None

    @contextlib.contextmanager
    def _timed(self, key: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.state.overhead[key] = self.state.overhead.get(key, 0.0) + time.perf_counter() - started

    def _overhead_summary(self) -> dict:
        """Seconds spent evaluating, sampling and checkpointing, and their share of this session's wall time."""
        out = {key: round(value, 3) for key, value in self.state.overhead.items()}
        wall = time.perf_counter() - self._session_started
        out["wall_s"] = round(wall, 3)
        out["share"] = round(sum(self.state.overhead.values()) / wall, 4) if wall > 0 else 0.0
        return out

    def _evaluate_and_track(self) -> bool:
        """Evaluate, log, sample; keep the best checkpoint. Returns True if evaluation ran."""
        s = self.state
        with self._timed("eval_s"):
            val_loss = self.evaluate()
        _check_losses({"validation loss": val_loss}, s.step)
        s.last_val_loss = val_loss

        bpb = bits_per_byte(val_loss, self.bytes_per_token)
        self._log({"kind": "eval", "step": s.step, "tokens": s.tokens, "val_loss": val_loss,
                   "val_ppl": math.exp(min(val_loss, 50.0)), "elapsed_s": round(s.elapsed_s, 3),
                   **({"val_bpb": bpb} if bpb is not None else {}), **self.eval_extras})
        # Under FSDP every rank takes part (rank 0 gathers the whole model to sample from).
        if (self.dist.is_main or self.fsdp) and self.config.train.sample_prompts:
            with self._timed("sample_s"):
                self.write_samples()
        # GRPO learns a reward, not the validation text: its newest checkpoint is its best (chat, evaluate, export)
        if val_loss < s.best_val_loss or (self.config.train.mode == "grpo" and s.step > 0):
            s.best_val_loss, s.best_step, s.evals_since_best = val_loss, s.step, 0
            self._event("best", val_loss=val_loss)
            self.save("latest")
            if self.dist.is_main:
                copy_checkpoint(self.run_dir / "checkpoints", "latest", "best")
        else:
            s.evals_since_best += 1
        self._status(state="running")
        return True

    def _handle_requests(self) -> bool:
        """Poll control files (rank 0 decides, all ranks follow). Returns True to stop the loop."""
        flags = torch.zeros(3)
        if self.dist.is_main:
            flags[0] = float(runs.take_request(self.run_dir, "stop") or bool(self.state.signals))
            flags[1] = float(runs.take_request(self.run_dir, "save"))
            flags[2] = float(runs.take_request(self.run_dir, "pause", consume=False))
        if self.dist.world_size > 1:
            import torch.distributed as dist

            dist.broadcast(flags, src=0)
        if flags[1]:
            self.save("latest", asked=True)
            self._emit({"kind": "saved", "step": self.state.step})
        if flags[2] and not flags[0]:
            return self._pause()
        if flags[0]:
            self.state.stop_reason = "signal" if self.state.signals else "stop"
            return True
        return False

    def _pause(self) -> bool:
        """Hold the model and optimizer in memory until the pause file goes away (or a stop arrives)."""
        self._status(state="paused")
        self._event("paused")
        paused_at = time.time()
        while runs.take_request(self.run_dir, "pause", consume=False):
            if runs.take_request(self.run_dir, "stop") or self.state.signals:
                self.state.stop_reason = "stop"
                return True
            if not self.fsdp and runs.take_request(self.run_dir, "save"):  # FSDP: all ranks save, after the pause
                self.save("latest", asked=True)
            time.sleep(0.2)
        self._status(state="running", paused_s=time.time() - paused_at)
        self._event("continued")
        return False

    def _fail(self, error: Exception) -> Optional[str]:
        """Record the failure in status.json; returns the explanation of a resource error, if it was one."""
        explained = explain_failure(error, self.config, self.state.step + 1)
        if explained:
            message = explained
        elif isinstance(error, SLMError):
            message = str(error)
        else:
            message = f"{type(error).__name__}: {error}"
            if self.dist.is_main:
                traceback.print_exc()
        if not self.dist.is_main:  # only rank 0 writes status.json: leave the cause for the launcher
            with contextlib.suppress(OSError):
                write_rank_error(self.run_dir, self.dist.rank, message)
        try:
            self._status(state="failed", pid=None, error=message, failed_step=self.state.step + 1)
        except OSError as status_error:  # e.g. the disk is too full even for status.json
            print(f"error: {message} (and status.json could not be written: {status_error})", file=sys.stderr)
        return explained

    def _install_signal_handlers(self) -> None:
        def on_signal(signum, _frame):
            self.state.signals.append(signum)

        with contextlib.suppress(ValueError):  # not the main thread: rely on the stop file
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)


def _parameter_counts(model: torch.nn.Module) -> dict:
    unique = {id(p): p for p in model.parameters()}.values()  # a tied embedding counts once
    return {"total_params": sum(p.numel() for p in unique),
            "trainable_params": sum(p.numel() for p in unique if p.requires_grad)}


def _cuda_peak(device: torch.device) -> dict:
    """The allocator's peak this session (weights, optimizer, activations): what benchmarks report."""
    if device.type != "cuda":
        return {}
    return {"gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def _check_losses(values: dict, step: int) -> None:
    """Stop the run at the first loss term (training, validation, distillation, preference) that is not a
    number, with one line and the last good checkpoint kept, before anything downstream uses it."""
    for name, value in values.items():
        if "loss" in name and isinstance(value, float) and not math.isfinite(value):
            label = "the loss" if name == "loss" else f"the {name.replace('_', ' ')}"
            raise SLMError(f"{label} became {value} at step {step}; lower train.lr or use train.precision=fp32. "
                           "The last good checkpoint is kept; resume from it")


def _finite(value: float) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None


def _progress_bar(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, disable=not enabled)


def train(config: RunConfig, run_dir: str | Path, callback: Optional[Callable[[dict], None]] = None,
          resume: bool = False, progress: bool = True) -> dict:
    """Train (or resume) the run in `run_dir`. Returns the final step, tokens, best val loss, state."""
    run_dir = Path(run_dir)
    preflight_train(config, run_dir, resume)  # bad inputs are refused before the run directory exists
    config = resolve_start(config, run_dir, train, progress=progress)  # train.init_from=recipe:NAME: made first
    preflight_memory(config)  # so is a model far beyond the device's memory (train.force=true overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _sole_writer(run_dir, config, resume):
        try:
            trainer = Trainer(config, run_dir, callback=callback, resume=resume, progress=progress)
        except Exception as error:
            explained = explain_failure(error, config, 0)
            message = explained or (str(error) if isinstance(error, SLMError) else f"{type(error).__name__}: {error}")
            runs.write_status(run_dir, state="failed", error=message, pid=None, mode=config.train.mode,
                              preset=config.preset, started_at=runs.read_status(run_dir).get("started_at") or time.time())
            if explained and not isinstance(error, SLMError):
                raise SLMError(explained) from error
            raise
        return trainer.run()


def _refuse_existing(run_dir: Path, resume: bool) -> None:
    if not resume and (run_dir / "status.json").exists() and (
            (run_dir / "checkpoints").exists() or (run_dir / "metrics.jsonl").exists()):
        raise SLMError(f"{run_dir} already holds a run: resume it (`slm resume {run_dir.name}`) or pick another --name")


@contextlib.contextmanager
def _sole_writer(run_dir: Path, config: RunConfig, resume: bool):
    """Rank 0 holds the run's lock for the whole run (a second writer is refused, naming the first),
    clears what a killed writer left behind, and marks a new run as running at once so a Studio
    sees it while data is still being prepared."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    _refuse_existing(run_dir, resume)  # before the lock too, so a refused start touches nothing
    with RunLock(run_dir):
        _refuse_existing(run_dir, resume)  # again: another writer may have started it meanwhile
        clean_stale(run_dir)
        if not resume:
            runs.write_status(run_dir, state="running", pid=os.getpid(), step=0, error=None, mode=config.train.mode,
                              preset=config.preset, max_steps=config.train.max_steps, started_at=time.time())
        yield
