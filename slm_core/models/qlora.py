"""QLoRA: LoRA adapters over a frozen base held in int8 or int4 weight-only form (ours on CPU, bitsandbytes
on CUDA), saved as ordinary peft adapters."""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as PeftLoraLinear

from slm_core.errors import SLMError
from slm_core.models.quantized import (
    WeightOnlyInt4Linear,
    WeightOnlyInt8Linear,
    dequantize_int8,
    quantize_int4,
    quantize_int8,
)

METHODS = ("none", "int8", "int4")
GROUP_SIZE = 64
SMALL_BATCH = 16  # rows (tokens) at or below which int8 uses the kernel (decode), above: dequantize + matmul
ROW_BLOCK = 8192  # output rows dequantized at once in training (8192 x 2048 fp32: 64 MB)

# Each packed byte → its (low, high) nibble minus 8, as floats: one embedding lookup unpacks a whole
# matrix faster than unpack_nibbles' shifts, masks and stack.
_NIBBLE_PAIRS = torch.stack([torch.arange(256) & 15, torch.arange(256) >> 4], -1).float() - 8  # (256, 2)


def dequantized_weight(module: nn.Module, rows: slice = slice(None)) -> torch.Tensor:
    """The fp32 (out, in) weight of a weight-only int8/int4 module (what its forward multiplies by), or
    the block of output rows `rows`."""
    if isinstance(module, WeightOnlyInt8Linear):
        return dequantize_int8(module.weight[rows], module.scales[rows])
    packed = module.packed_weight()[rows]  # (rows, in_padded/2) uint8
    table = _NIBBLE_PAIRS.to(packed.device)
    q = F.embedding(packed.int(), table).view(packed.shape[0], -1, module.group_size)  # (rows, groups, group)
    w = torch.addcmul(module.zeros[rows, :, None], q, module.scales[rows, :, None])  # (q - 8) * scale + zero
    return w.view(packed.shape[0], -1)[:, : module.in_features]


def _row_blocks(module: nn.Module) -> list[slice]:
    """Output rows in blocks of ROW_BLOCK: a 128k-token lm_head is dequantized 64 MB at a time, not 1 GB."""
    return [slice(i, i + ROW_BLOCK) for i in range(0, module.out_features, ROW_BLOCK)]


class _FrozenQuantLinear(torch.autograd.Function):
    """y = x @ W.T + b for a frozen quantized W, with a gradient for x (none for W: it never trains)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        ctx.module, ctx.x_dtype = module, x.dtype
        rows = x.numel() // x.shape[-1]
        if isinstance(module, WeightOnlyInt8Linear) and rows <= SMALL_BATCH:
            return WeightOnlyInt8Linear.forward(module, x)  # the int8 kernel
        blocks = _row_blocks(module)
        if len(blocks) == 1:
            y = F.linear(x, dequantized_weight(module).to(x.dtype))  # (..., out)
        else:
            y = None
            for block in blocks:
                part = F.linear(x, dequantized_weight(module, block).to(x.dtype))  # (..., block)
                y = part.new_empty(*x.shape[:-1], module.out_features) if y is None else y
                y[..., block] = part
        return y if module.bias is None else y + module.bias.to(y.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        grad_x = None
        for block in _row_blocks(ctx.module):  # grad (..., out) @ W (out, in), a block of W at a time
            part = grad[..., block].float() @ dequantized_weight(ctx.module, block)
            grad_x = part if grad_x is None else grad_x.add_(part)
        return grad_x.to(ctx.x_dtype), None


class QLoRAInt8Linear(WeightOnlyInt8Linear):
    """A QLoRA base's int8 linear: quantize.py's module, differentiable with respect to its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FrozenQuantLinear.apply(x, self)


class QLoRAInt4Linear(WeightOnlyInt4Linear):
    """A QLoRA base's int4 linear: quantize.py's module, differentiable with respect to its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FrozenQuantLinear.apply(x, self)


class QuantLoraLinear(PeftLoraLinear):
    """peft's LoRA Linear around one of our weight-only modules: base (frozen, quantized) + B(A(x)) * scale.

    Only vanilla LoRA (what lora.apply_lora configures). Merging would have to re-round the merged
    weight to int4/int8, losing the adapter's fine detail, so it is refused: merge onto the float base.
    """

    def _get_in_out_features(self, module: nn.Module):
        return module.in_features, module.out_features

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        result = self.base_layer(x)
        if self.disable_adapters:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            h = self._cast_input_dtype(x, lora_a.weight.dtype) if not torch.is_autocast_enabled() else x
            result = result + (lora_b(lora_a(self.lora_dropout[name](h))) * self.scaling[name]).to(result.dtype)
        return result

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise SLMError("a QLoRA adapter is not merged into its quantized base (that would round it away): "
                       "load the run (its adapter goes onto the float base named by train.init_from) and merge there")

    def unmerge(self) -> None:
        raise SLMError("a QLoRA layer is never merged, so there is nothing to unmerge")

    def __repr__(self) -> str:
        return "qlora." + super().__repr__()


def register_quantized_layers(peft_config) -> None:
    """Tell peft to wrap our weight-only modules with QuantLoraLinear (peft's custom-layer API)."""
    if not hasattr(peft_config, "_register_custom_module"):
        raise SLMError("QLoRA on CPU needs peft >= 0.13 (custom LoRA layers): pip install -U peft")
    peft_config._register_custom_module({WeightOnlyInt8Linear: QuantLoraLinear, WeightOnlyInt4Linear: QuantLoraLinear})


# ---- the quantized base ---------------------------------------------------------------------------

class Int8Embedding(nn.Module):
    """The token table as int8 rows with one fp32 scale each; looked-up rows are dequantized to `dtype`.
    With tied embeddings the tensors are lm_head's own (stored once)."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("weight", weight)  # (vocab, d_model) int8
        self.register_buffer("scales", scales)  # (vocab,) fp32
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight).to(self.dtype)  # (B, T, d_model)
        return rows * self.scales[ids].unsqueeze(-1).to(self.dtype)


def use_bitsandbytes(device: torch.device) -> bool:
    return torch.device(device).type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None


def quantize_base(model: nn.Module, method: str, device="cpu", group_size: int = GROUP_SIZE) -> nn.Module:
    """Quantize a float Transformer's weights in place for QLoRA → the same model, frozen.

    int8: every linear int8 per row. int4: the block linears int4 in groups of `group_size`, lm_head
    int8 (the most error-sensitive layer, as quantize.py keeps it). The token table: int8 rows.
    Norms, biases and positions stay float. On CUDA with bitsandbytes installed its layers are used
    instead (nf4 / LLM.int8()); peft wraps those by itself."""
    if method not in METHODS or method == "none":
        raise SLMError(f"lora.quantize_base={method!r} is not a quantized base: use int8 or int4 (or none)")
    model.requires_grad_(False)
    if use_bitsandbytes(device):
        return _bitsandbytes_base(model, method)
    float_dtype = model.norm.weight.dtype
    tied = model.config.tie_embeddings
    for name, linear in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
        parent, _, child = name.rpartition(".")
        weight = linear.weight.detach()
        if method == "int4" and name != "lm_head":
            packed, scales, zeros = _by_rows(lambda w: quantize_int4(w, group_size), weight)
            new = QLoRAInt4Linear(packed, scales, zeros, linear.in_features, linear.bias)
        else:
            new = QLoRAInt8Linear(*_by_rows(quantize_int8, weight), linear.bias)
        setattr(model.get_submodule(parent) if parent else model, child, new)  # the float weight is freed here
    if tied:
        table = Int8Embedding(model.lm_head.weight, model.lm_head.scales, float_dtype)
    else:
        table = Int8Embedding(*_by_rows(quantize_int8, model.embed_tokens.weight.detach()), float_dtype)
    model.embed_tokens = table
    # The float leftovers (norms, biases) may still be views of the loader's memory-mapped file, which would
    # keep every page read while quantizing resident: give them their own memory so the mapping goes.
    for module in model.modules():
        for key, param in module._parameters.items():
            if param is not None:
                module._parameters[key] = nn.Parameter(param.detach().clone(), requires_grad=False)
    model.qlora = {"method": method, "group_size": group_size if method == "int4" else None, "backend": "slm"}
    return model


def _by_rows(quantize, weight: torch.Tensor, rows: int = 4096) -> tuple:
    """quantize(weight) computed on blocks of rows (every format here is per row or per group within a
    row): the fp32 temporaries then stay a few MB instead of several copies of a 128k-token table."""
    parts = [quantize(weight[i:i + rows]) for i in range(0, weight.shape[0], rows)]
    return tuple(torch.cat(pieces) for pieces in zip(*parts))


def _bitsandbytes_base(model: nn.Module, method: str) -> nn.Module:
    """bitsandbytes' layers in place of the block linears (they quantize when moved to the GPU)."""
    import bitsandbytes as bnb

    for name, linear in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]:
        parent, _, child = name.rpartition(".")
        bias = linear.bias is not None
        if method == "int4":
            new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias,
                                    compute_dtype=torch.bfloat16, quant_type="nf4")
            new.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type="nf4")
        else:
            new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False)
            new.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
        if bias:
            new.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        setattr(model.get_submodule(parent), child, new)
    model.qlora = {"method": method, "group_size": None, "backend": "bitsandbytes"}
    return model


def base_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's tensors, excluding LoRA adapters (each storage counted once)."""
    seen, total = set(), 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if "lora_" in name or tensor.device.type == "meta":
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def quantized_weight_count(model: nn.Module) -> int:
    """Weights a quantized base holds in buffers (not parameters): each linear's in x out, the int8 table
    once (a tied lm_head shares it)."""
    seen, count = set(), 0
    for module in model.modules():
        if isinstance(module, (WeightOnlyInt8Linear, WeightOnlyInt4Linear, Int8Embedding)):
            key = module.weight.data_ptr() if module.weight.numel() else id(module)
            if key not in seen:
                seen.add(key)
                count += module.out_features * module.in_features if hasattr(module, "in_features") \
                    else module.weight.numel()
    return count
