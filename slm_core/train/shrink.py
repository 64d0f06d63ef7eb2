""""Shrink this model": a student made of the teacher's first, last and evenly spaced layers, ready to be
distilled from it; `shrink_summary` and `slm shrink`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import torch

from slm_core.config import RunConfig
from slm_core.errors import SLMError
from slm_core.models.estimate import count_parameters
from slm_core.models.load import LoadedModel
from slm_core.models.model import Transformer
from slm_core.models.quantized import is_quantized


def pick_layers(n_teacher: int, n_student: int) -> list[int]:
    """n_student teacher layer indices, evenly spaced, first and last included."""
    if not 1 <= n_student <= n_teacher:
        raise SLMError(f"a student needs between 1 and {n_teacher} layers (the teacher's count); got {n_student}")
    if n_student == 1:
        return [n_teacher - 1]
    return sorted({round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)})


def student_config(teacher_config, n_layer: int):
    """The teacher's ModelConfig with n_layer layers (and a name saying so); the HF source config is
    kept so an export writes the same rope/bos/eos fields with the new depth."""
    return dataclasses.replace(teacher_config, n_layer=n_layer, name=f"{teacher_config.name}-{n_layer}L")


def shrink(teacher: torch.nn.Module, n_layer: int, layers: Optional[list[int]] = None) -> torch.nn.Module:
    """A new Transformer of n_layer blocks copied from `teacher`'s blocks `layers` (default: pick_layers)."""
    config = teacher.config
    layers = layers or pick_layers(config.n_layer, n_layer)
    if len(layers) != n_layer or any(not 0 <= i < config.n_layer for i in layers):
        raise SLMError(f"layers {layers} must name {n_layer} of the teacher's layers 0..{config.n_layer - 1}")
    teacher_state = teacher.state_dict()
    state = {k: v for k, v in teacher_state.items() if not k.startswith("layers.")}
    for new, old in enumerate(layers):
        prefix = f"layers.{old}."
        state.update({f"layers.{new}.{k[len(prefix):]}": v for k, v in teacher_state.items() if k.startswith(prefix)})
    with torch.device("meta"):
        student = Transformer(student_config(config, n_layer))
    student.load_state_dict({k: v.detach().clone() for k, v in state.items()}, assign=True)
    student.tie_weights()
    return student


def shrink_summary(teacher_config, n_layer: int, bytes_per_param: int = 2) -> dict:
    """Teacher vs student: parameters, weight memory (bf16 by default) and expected decode speed-up."""
    teacher = count_parameters(teacher_config)
    student = count_parameters(student_config(teacher_config, n_layer))
    # Per-token compute ~ 2 x (blocks + output layer); the input embedding is a lookup.
    compute = lambda c: c["non_embedding"] + c["lm_head_matmul"]  # noqa: E731
    return {"teacher_params": teacher["total"], "student_params": student["total"],
            "teacher_weights_mb": teacher["total"] * bytes_per_param / 2**20,
            "student_weights_mb": student["total"] * bytes_per_param / 2**20,
            "expected_speedup": compute(teacher) / max(compute(student), 1),
            "layers": pick_layers(teacher_config.n_layer, n_layer)}


def shrunk_base(teacher: torch.nn.Module, tokenizer, n_layer: int, source=None):
    """The student for a distill run with distill.shrink_layers: the shrunk teacher as a LoadedModel
    (what modes.py takes a base model as), with the teacher's tokenizer."""
    if not hasattr(teacher, "layers") or is_quantized(teacher):
        raise SLMError(f"the teacher {source} cannot be shrunk (it is quantized or not a model this engine builds): "
                       f"use the float model or run it was made from")
    if tokenizer is None:
        raise SLMError(f"the teacher {source} has no tokenizer (tokenizer.json), and a shrunk student uses the "
                       f"teacher's: add the tokenizer files to the teacher's folder")
    student = shrink(teacher, n_layer)
    student.requires_grad_(True)
    return LoadedModel(student, tokenizer, RunConfig(model=student.config), Path(str(source or ".")), kind="shrunk")


# ---- command line: `slm shrink` -------------------------------------------------------------------


def format_summary(name: str, teacher_layers: int, info: dict, human) -> str:
    """Teacher vs student, as printed before `slm shrink` starts."""
    return "\n".join([
        f"shrinking {name}: {teacher_layers} → {len(info['layers'])} layers (keeping the teacher's "
        f"{', '.join(map(str, info['layers']))})",
        f"{'':<12}{'teacher':>12}{'student':>12}",
        f"{'parameters':<12}{human(info['teacher_params']):>12}{human(info['student_params']):>12}",
        f"{'bf16 memory':<12}{info['teacher_weights_mb']:>9.0f} MB{info['student_weights_mb']:>9.0f} MB",
        f"expected speed-up per token: {info['expected_speedup']:.2f}x"])
