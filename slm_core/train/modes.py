"""Pretraining, distillation, LoRA and full fine-tuning: where each mode's model and tokenizer come from,
what trains, and the loss; `build_for_mode` also freezes the run's identity on disk."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from slm_core.config import PREFERENCE_MODES, RunConfig
from slm_core.data.cache import prepare_data
from slm_core.data.preference import prepare_preferences
from slm_core.errors import SLMError
from slm_core.models.load import load_model
from slm_core.models.lora import apply_lora, trainable_summary
from slm_core.models.model import Transformer, merge_adapter
from slm_core.models.tokenizer import Tokenizer
from slm_core.run import lineage, runs
from slm_core.system import cpu_has_native_bf16
from slm_core.train.distill import DistillLoss, check_compatible, load_teacher
from slm_core.train.grpo import GRPO
from slm_core.train.preference import build_loss
from slm_core.train.preflight import preflight
from slm_core.train.shrink import shrunk_base


@dataclass
class Built:
    config: RunConfig
    data: Any
    model: torch.nn.Module
    tokenizer: Any
    loss_fn: Optional[Callable] = None
    parent: Optional[str] = None
    batch_fn: Optional[Callable] = None  # (model, generator, step) -> (x, y): a mode that makes its own batches


def build_for_mode(config: RunConfig, run_dir: Path, device: torch.device, resume: bool = False,
                   progress: bool = True) -> Built:
    config.check_ready()
    mode = config.train.mode
    base = teacher = teacher_tokenizer = None
    if mode in ("lora", "finetune", "grpo", *PREFERENCE_MODES) or (mode == "distill" and config.train.init_from):
        base = _load_base(config.train.init_from, config.train.force, run_dir.parent)
    if mode == "distill":
        shrinking = bool(config.distill.shrink_layers)  # the student is cut from our own copy of the teacher
        teacher, teacher_tokenizer = load_teacher(config.distill.teacher, device, native=shrinking,
                                                    runs_dir=run_dir.parent)
        if shrinking:
            base = shrunk_base(teacher, teacher_tokenizer, config.distill.shrink_layers, config.distill.teacher)
    tokenizer = _choose_tokenizer(config, run_dir, resume, base, teacher_tokenizer)
    if base is not None and config.data.template is None and getattr(tokenizer, "chat_template", None):
        # Instruction data for a Hub model trains in that model's own chat template (plain text ignores it).
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, template="model"))
    data = _prepare(config, tokenizer, progress)
    tokenizer = data.tokenizer
    config = _resolve_config(config, base, tokenizer, data)

    preflight(config, resolved=True)  # the final shape: refuse one far beyond the device's memory
    model = _build_model(config, base, device)
    loss_fn, parent, batch_fn = None, config.train.init_from, None
    if mode == "distill":
        loss_fn, parent = _distill_loss(config, teacher, teacher_tokenizer, tokenizer), config.distill.teacher
    if mode == "grpo":  # samples, scores and its loss: slm_core.train.grpo
        grpo = GRPO(config, model, tokenizer, run_dir, is_main=_is_main_rank())
        loss_fn, batch_fn = grpo.loss, grpo.batch
    if mode in PREFERENCE_MODES:  # DPO/ORPO on pairs; DPO's reference: slm_core.train.preference
        loss_fn = build_loss(mode, config.preference, model, data, config.model.context_length)
    _freeze_run_identity(run_dir, config, tokenizer, data, resume)
    return Built(config, data, model, tokenizer, loss_fn, parent, batch_fn)


def _load_base(source: str, force: bool, runs_dir: Path):
    base = load_model(source, tag="best", force=force, runs_dir=runs_dir)  # refused before loading when it cannot fit
    if base.tokenizer is None:
        raise SLMError(f"the base model {source} has no tokenizer (tokenizer.json); add one to the folder")
    if base.kind == "quantized":
        raise SLMError("a quantized model cannot be trained further; pick the run it was quantized from")
    return base


def _choose_tokenizer(config: RunConfig, run_dir: Path, resume: bool, base, teacher_tokenizer):
    """Resume: the run's own. Fine-tune/LoRA: the base model's. Distill: the teacher's unless one is named."""
    if resume and (run_dir / "tokenizer").is_dir():
        return Tokenizer.load(run_dir / "tokenizer")
    if base is not None:
        return base.tokenizer
    if teacher_tokenizer is not None and not config.tokenizer.path:
        return teacher_tokenizer
    return None  # prepare_data builds it from config.tokenizer (training a BPE if asked)


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _prepare(config: RunConfig, tokenizer, progress: bool):
    """Rank 0 tokenizes (and trains the BPE) first; the other ranks then read its cache."""
    if not _is_main_rank():
        _barrier()
    if config.train.mode in PREFERENCE_MODES:  # pairs, not running text: their own cache
        data = prepare_preferences(config, tokenizer)
    else:
        data = prepare_data(config, tokenizer=tokenizer, progress=progress and _is_main_rank())
    if _is_main_rank():
        _barrier()
    return data


def _resolve_config(config: RunConfig, base, tokenizer, data) -> RunConfig:
    model_cfg = base.config.model if base is not None else config.model
    if model_cfg.vocab_size is None:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=tokenizer.n_vocab)
    if model_cfg.vocab_size < tokenizer.n_vocab:
        raise SLMError(f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's {tokenizer.n_vocab} "
                       f"tokens; set model.vocab_size={tokenizer.n_vocab} (or null to take it from the tokenizer)")
    if base is not None:  # dropout and context are the new run's to choose, the shape is the base's
        model_cfg = dataclasses.replace(model_cfg, dropout=config.model.dropout,
                                        context_length=min(config.model.context_length, model_cfg.context_length))
    data_cfg = dataclasses.replace(config.data, template=data.template)  # the template actually trained with
    return dataclasses.replace(config, model=model_cfg, data=data_cfg)


def _build_model(config: RunConfig, base, device: torch.device) -> torch.nn.Module:
    if base is not None:
        model = merge_adapter(base.model)  # a LoRA run as the base: fold its adapter in first
        model.config = config.model  # the same shape; new dropout/context
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = config.model.dropout
    else:
        model = Transformer(config.model)
    model.gradient_checkpointing = config.train.grad_checkpointing
    qlora = config.uses_lora and config.lora.quantize_base != "none"
    if base is not None and not qlora and _half_weights_are_slow(model, device):
        # A Hub base arrives in bf16, far slower than fp32 without bf16 units: benchmarks/bench_finetune_memory.py
        model.float()
    if qlora:  # QLoRA: quantize before the move
        from slm_core.models.qlora import base_weight_bytes, quantize_base  # imports peft (seconds): QLoRA only

        model = quantize_base(model, config.lora.quantize_base, device)
        print(f"QLoRA: base held in {config.lora.quantize_base} ({model.qlora['backend']}), "
              f"{base_weight_bytes(model) / 2**20:,.1f} MB of weights", flush=True)
    model.to(device)
    if config.uses_lora:
        model = apply_lora(model, config.lora)
        counts = trainable_summary(model)
        print(f"LoRA: {counts['trainable']:,} trainable of {counts['total']:,} parameters "
              f"({counts['trainable_percent']:.2f}%)", flush=True)
    model.train()
    return model


def _half_weights_are_slow(model: torch.nn.Module, device: torch.device) -> bool:
    half = any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters())
    return half and device.type == "cpu" and not cpu_has_native_bf16()


def _distill_loss(config: RunConfig, teacher, teacher_tokenizer, tokenizer):
    teacher_vocab = _vocab_of(teacher)
    check_compatible(tokenizer, teacher_tokenizer, config.model.vocab_size, teacher_vocab)
    return DistillLoss(teacher, alpha=config.distill.alpha, temperature=config.distill.temperature)


def _vocab_of(module: torch.nn.Module) -> Optional[int]:
    config = getattr(module, "config", None)
    return getattr(config, "vocab_size", None)


def _freeze_run_identity(run_dir: Path, config: RunConfig, tokenizer, data, resume: bool) -> None:
    if not _is_main_rank():
        return
    lineage.record_run(run_dir, config, data_fingerprint=data.fingerprint, tokenizer=tokenizer.fingerprint(), resume=resume)
    if resume and (run_dir / "config.yaml").exists() and (run_dir / "tokenizer").is_dir():
        runs.atomic_write_text(run_dir / "config.yaml", config.to_yaml())  # overrides given at resume
        return
    runs.atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    tokenizer.save(run_dir / "tokenizer")
    runs.atomic_write_json(run_dir / "data.json", {
        "fingerprint": data.fingerprint, "train_tokens": data.train_tokens, "val_tokens": data.val_tokens,
        "source": config.data.source, "n_chars": getattr(data, "n_chars", None),
    })
