"""Which prepared weight copies the decoder (slm_core.infer.decoder) makes for a model of a given size,
so memory estimates can count them without importing the decoder."""

from __future__ import annotations

import torch

FAST_MAX_PARAMS = 300_000_000  # fused, prepacked fp32 copies double most weights: small models only


# Up to here an (in, out) copy serves one-row multiplies on one thread, where MKL beats oneDNN: benchmarks/bench_chat.py
ONE_ROW_COPY_MAX_PARAMS = 150_000_000


# From here fp32 weights outgrow the cache, so one-row steps read a half-precision copy: benchmarks/bench_chat.py
ONE_ROW_HALF_MIN_PARAMS = 40_000_000


# Prepacking pays from about this width; below it oneDNN's per-call cost loses to MKL: benchmarks/bench_chat.py
ONEDNN_MIN_DIM = 512


def one_row_half_default(n_params: int, dtype: torch.dtype, device) -> bool:
    """Whether an fp32 CPU model decodes its one-row steps from a half-precision copy ('auto'): when it is big
    enough to be memory-bound (ONE_ROW_HALF_MIN_PARAMS)."""
    return (dtype == torch.float32 and torch.device(device).type == "cpu"
            and ONE_ROW_HALF_MIN_PARAMS <= n_params)


def prepared_weight_copies(n_params: int, d_model: int, dtype: str, device: str) -> float:
    """How many copies of its linear weights a Decoder makes besides the model's own (for memory estimates,
    in units of the model's weights): the fused, prepared matrices up to FAST_MAX_PARAMS, plus the one-row
    copy (fp16 or bf16, half a copy, from ONE_ROW_HALF_MIN_PARAMS; else fp32 next to oneDNN's up to
    ONE_ROW_COPY_MAX_PARAMS)."""
    small = n_params <= FAST_MAX_PARAMS
    if one_row_half_default(n_params, torch.float32 if dtype == "fp32" else torch.bfloat16, device):
        return 1.5 if small else 0.5
    packed = dtype == "fp32" and not str(device).startswith("cuda") and d_model >= ONEDNN_MIN_DIM
    return int(small) + int(small and packed and n_params <= ONE_ROW_COPY_MAX_PARAMS)
