"""The GGUF quantization ladder: f32, f16, q8_0, q5_1, q5_0, q4_1, q4_0 written by gguf-py's numpy quantizers,
and the K-quants (q6_k, q5_k_m, q4_k_m) by llama.cpp's own quantizer (the `llama-quantize` program or the
llama-cpp-python bindings) from an f16 file, or refused with a one-line reason when neither is here."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from slm_core.errors import SLMError

# level → (GGML type of 2-D weights, GGML type of token_embd / output, llama file type); names are gguf's.
NUMPY_LEVELS = {
    "f32": ("F32", "F32", "ALL_F32"),
    "f16": ("F16", "F16", "MOSTLY_F16"),
    "q8_0": ("Q8_0", "Q8_0", "MOSTLY_Q8_0"),
    # llama-quantize keeps the embedding/output at Q6_K for these; gguf-py cannot write Q6_K, Q8_0 is next above.
    "q5_1": ("Q5_1", "Q8_0", "MOSTLY_Q5_1"),
    "q5_0": ("Q5_0", "Q8_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "Q8_0", "MOSTLY_Q4_1"),
    "q4_0": ("Q4_0", "Q8_0", "MOSTLY_Q4_0"),
}
K_LEVELS = {"q6_k": "MOSTLY_Q6_K", "q5_k_m": "MOSTLY_Q5_K_M", "q4_k_m": "MOSTLY_Q4_K_M"}
GGUF_TYPES = (*NUMPY_LEVELS, *K_LEVELS)
# Bits per weight of each level's 2-D tensors (block bytes * 8 / block size), for size estimates before export.
_K_BITS = {"q6_k": 6.5625, "q5_k_m": 5.6875, "q4_k_m": 4.8906}  # Q4_K_M/Q5_K_M mix some Q6_K tensors in


def check_level(level: str) -> str:
    if level not in GGUF_TYPES:
        raise SLMError(f"GGUF type {level!r} is not supported: use one of {', '.join(GGUF_TYPES)}")
    return level


def file_type(level: str) -> int:
    import gguf

    return int(getattr(gguf.LlamaFileType, NUMPY_LEVELS[level][2] if level in NUMPY_LEVELS else K_LEVELS[level]))


def encode(name: str, array: np.ndarray, level: str):
    """(data, raw_dtype or None) for GGUFWriter.add_tensor: 1-D tensors (norms, biases, rope factors) stay f32,
    as convert_hf_to_gguf keeps them; a row length the block size does not divide falls back to f16."""
    import gguf

    weights, edge, _ = NUMPY_LEVELS[level]
    kind = edge if name.startswith(("token_embd.", "output.")) else weights
    if array.ndim < 2 or kind == "F32":
        return array.astype(np.float32), None
    qtype = gguf.GGMLQuantizationType[kind]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if kind == "F16" or array.shape[-1] % block:
        return array.astype(np.float16), None
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype), qtype


def bits_per_weight(level: str) -> float:
    """Average stored bits per 2-D weight at `level` (embedding/output edges aside)."""
    import gguf

    if level in _K_BITS:
        return _K_BITS[level]
    qtype = gguf.GGMLQuantizationType[NUMPY_LEVELS[level][0]]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return size * 8 / block


def estimated_bytes(n_matrix: int, n_edge: int, n_vector: int, level: str) -> int:
    """File size estimate: hidden matrices at the level, embedding/output at its edge type (Q6_K under the
    K-quants, as llama-quantize does), vectors f32."""
    edge_bits = _K_BITS["q6_k"] if level in _K_BITS else bits_per_weight(NUMPY_LEVELS[level][1].lower())
    return int(n_matrix * bits_per_weight(level) / 8 + n_edge * edge_bits / 8 + n_vector * 4)


# ---- K-quants through llama.cpp ----------------------------------------------------------------------

def k_quantizer() -> tuple[str, object] | None:
    """('binary', path) | ('bindings', module) | None: what can write K-quants here."""
    binary = shutil.which("llama-quantize")
    if binary:
        return "binary", binary
    try:
        import llama_cpp  # optional: llama-cpp-python
    except Exception:  # an import of a native library can fail in more ways than ImportError
        return None
    return "bindings", llama_cpp


def require_k_quantizer(level: str):
    found = k_quantizer()
    if found is None:
        raise SLMError(f"GGUF {level} needs llama.cpp's quantizer, which is not here: put llama-quantize on PATH "
                       "or pip install llama-cpp-python, or pick q8_0, q5_0 or q4_0")
    return found


def k_quantize(source: Path, target: Path, level: str) -> Path:
    """An f16/f32 GGUF → `target` at K-quant `level`, by llama.cpp (metadata and tokenizer carried over)."""
    kind, tool = require_k_quantizer(level)
    threads = max(1, (os.cpu_count() or 1))
    if kind == "binary":
        done = subprocess.run([tool, str(source), str(target), level.upper(), str(threads)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise SLMError(f"llama-quantize failed to write {level}: {last[0]}")
        return target
    params = tool.llama_model_quantize_default_params()
    params.ftype = file_type(level)
    params.nthread = threads
    if tool.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise SLMError(f"llama.cpp (llama-cpp-python) failed to quantize to {level}")
    return target
