"""A GGUF file read back: its key-values as Python values and its tensors dequantized to float32.

Hand-written over the file layout (header, key-values, tensor infos, aligned data) rather than through
gguf.GGUFReader, which maps each of a real vocabulary's 150k token strings into its own numpy view first: tens of
seconds for a Qwen or Llama 3 tokenizer, against well under one here. Dequantizing is gguf-py's."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize("<" + fmt)
    return struct.unpack("<" + fmt, f.read(size))[0]


def _string(f: BinaryIO) -> str:
    return f.read(_read(f, "Q")).decode("utf-8", errors="replace")


def _value(f: BinaryIO, kind: int):
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, count = _read(f, "I"), _read(f, "Q")
        if item in _SCALARS:
            fmt = _SCALARS[item]
            data = np.frombuffer(f.read(struct.calcsize(fmt) * count), dtype=np.dtype("<" + fmt))
            return data.tolist()
        return [_value(f, item) for _ in range(count)]
    return _read(f, _SCALARS[kind])


def read_metadata(path: str | Path, stop_at: Optional[str] = None) -> dict:
    """Key → value (arrays as lists), plus GGUF.version / GGUF.tensor_count / GGUF.kv_count; with stop_at, reading
    ends at that key (the file's other keys are not returned)."""
    with open(path, "rb") as f:
        return _metadata(f, stop_at)[0]


def _metadata(f: BinaryIO, stop_at: Optional[str]) -> tuple[dict, int]:
    if f.read(4) != b"GGUF":
        raise ValueError(f"{getattr(f, 'name', 'file')} is not a GGUF file")
    fields = {"GGUF.version": _read(f, "I"), "GGUF.tensor_count": _read(f, "Q"), "GGUF.kv_count": _read(f, "Q")}
    for _ in range(fields["GGUF.kv_count"]):
        key, kind = _string(f), _read(f, "I")
        fields[key] = _value(f, kind)
        if key == stop_at:
            break
    return fields, fields["GGUF.tensor_count"]


def read_gguf(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata fields as Python values, tensors dequantized to float32 in numpy (rows, cols) order)."""
    import gguf

    with open(path, "rb") as f:
        fields, count = _metadata(f, None)
        infos = []
        for _ in range(count):
            name, n_dims = _string(f), _read(f, "I")
            dims = [_read(f, "Q") for _ in range(n_dims)]
            infos.append((name, dims, _read(f, "I"), _read(f, "Q")))
        alignment = int(fields.get("general.alignment", 32))
        start = -(-f.tell() // alignment) * alignment
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for name, dims, kind, offset in infos:
        qtype = gguf.GGMLQuantizationType(kind)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        shape = list(reversed(dims))  # GGUF lists the fastest-moving dimension first
        n_bytes = int(np.prod(dims)) // block * size
        data = raw[start + offset:start + offset + n_bytes]
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            array = data.view(np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16).reshape(shape)
        else:
            array = gguf.quants.dequantize(data.reshape(*shape[:-1], shape[-1] // block * size), qtype)
        tensors[name] = np.asarray(array, dtype=np.float32).reshape(shape)
    return fields, tensors
