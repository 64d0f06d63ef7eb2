"""Which prepared weight copies the decoder (slm_core.infer.decoder) makes for a model of a given size,
so memory estimates can count them without importing the decoder."""

from __future__ import annotations

import torch

FAST_MAX_PARAMS = 300_000_000  # fused, prepacked fp32 copies double most weights: small models only


# Up to here a second, (in, out) copy serves one-row multiplies on one thread, where MKL streams the weights
# faster than oneDNN (~100M model: 35 vs 28 tokens/s; on two threads oneDNN is ahead, 43 vs 36).
ONE_ROW_COPY_MAX_PARAMS = 150_000_000


# From here an fp32 model is several times a CPU's last-level cache, so a one-row step streams every weight
# from memory and its speed is bytes per token: the one-row copy is then half precision (half the bytes; fp32
# activations and accumulation), fp16 through FBGEMM where torch has it (x86), else bf16. ~100M model, 2 threads,
# exact fp32 against the bf16 copy: 42-46 vs 92-99 tokens/s on an Intel AVX2 CPU; on an AMD one, where bf16
# (no bf16 arithmetic on AVX2) gains less, exact / bf16 / fp16: 19-20 / 25 / 26-31, on 1 thread 20-24 / 17-18 /
# 22-24. Below it the weights stay cached and fp32 is faster. FBGEMM packs at ~40 ns a weight: 100M, +2.5 s.
# Past FAST_MAX_PARAMS the copy is bf16 and the only one, fused per projection (half the weights' memory): a
# Llama-3.2-1B-shaped model, 2 threads, 3.2-3.6 -> 10.9-11.6 tokens/s; it is made only where memory has room.
ONE_ROW_HALF_MIN_PARAMS = 40_000_000


# Prepacking pays from about this width: on a 256-wide model's matrices oneDNN's per-call cost made a
# 4-row step 20-40% slower than MKL's (measured in place; isolated micro-benchmarks flatter oneDNN).
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
