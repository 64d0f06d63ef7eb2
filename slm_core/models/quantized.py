"""Weight-only int8 and int4 and dynamic int8: the number formats, the modules that run them, the state-dict
conversion and quantized artifacts. Formats: docs/engine-notes.md."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from slm_core.config import ModelConfig, RunConfig
from slm_core.errors import SLMError
from slm_core.models.model import Transformer, merge_adapter
from slm_core.run import lineage
from slm_core.run.manifest import WEIGHTS

METHODS = ("int8", "int4", "int8-dynamic")
GROUP_SIZES = (32, 64, 128, 256)  # what the CPU int4 kernel accepts
META_FILE = "quantization.json"
FORMAT = "slm-quantized"
VERSION = 1
# Switch for tests and benchmarks: False forces the dequantize-then-matmul path everywhere.
USE_CPU_KERNELS = True


# ---- the number formats -------------------------------------------------------------------------

def _round_scale_up(scale: torch.Tensor) -> torch.Tensor:
    """Round positive fp32 scales up to 16 significant bits. Then q * scale (|q| <= 127) is exact in
    fp32, so a dequantized table quantizes back to the very same q and scale (lossless re-save)."""
    bits = scale.float().contiguous().view(torch.int32)
    return ((bits + 0xFF) & -256).view(torch.float32)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float → int8 (out, in), scales fp32 (out,); |w - q*s| <= s/2 per element."""
    w = weight.detach().float()
    scales = _round_scale_up(w.abs().amax(dim=1).clamp(min=1e-12) / 127)
    q = torch.clamp(torch.round(w / scales[:, None]), -127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return q.float() * scales.float()[:, None]


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(out, in) values 0..15 → uint8 (out, in/2); even columns in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (out, in/2) → uint8 (out, in) values 0..15."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).view(packed.shape[0], -1)


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, in) float → packed uint8 (out, in_p/2), scales, zeros fp32 (out, in_p/group).

    Per group: scale = (max - min) / 15, nibble = round((w - min) / scale), so |w - w_hat| <= scale/2.
    """
    out_features, in_features = weight.shape
    padded = -(-in_features // group_size) * group_size
    w = F.pad(weight.detach().float(), (0, padded - in_features))
    groups = w.view(out_features, padded // group_size, group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = ((high - low) / 15).clamp(min=1e-12)
    q = torch.clamp(torch.round((groups - low[..., None]) / scales[..., None]), 0, 15)
    zeros = low + 8 * scales  # so that w = (q - 8) * scale + zero
    return pack_nibbles(q.view(out_features, padded)), scales, zeros


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    in_features: Optional[int] = None) -> torch.Tensor:
    """The float (out, in) weight of an int4 layer (padding columns dropped)."""
    q = unpack_nibbles(packed).float()  # (out, in_p)
    out_features, padded = q.shape
    group = padded // scales.shape[1]
    w = (q.view(out_features, -1, group) - 8) * scales.float()[..., None] + zeros.float()[..., None]
    return w.view(out_features, padded)[:, : in_features or padded]


# ---- modules ------------------------------------------------------------------------------------

def _cpu_kernels_for(x: torch.Tensor) -> bool:
    return USE_CPU_KERNELS and x.device.type == "cpu" and x.dtype.is_floating_point


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor whose data starts on a 64-byte boundary. The CPU kernels use aligned SIMD
    loads and segfault otherwise; tensors read by safetensors.load_file or sliced views may be offset."""
    if t.is_contiguous() and t.data_ptr() % 64 == 0:
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _frozen(t: Optional[torch.Tensor]) -> Optional[nn.Parameter]:
    return None if t is None else nn.Parameter(t.detach().clone(), requires_grad=False)


class WeightOnlyInt8Linear(nn.Module):
    """y = x @ (int8 weight * per-row scale).T + bias."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", _aligned(weight.to(torch.int8)))
        self.register_buffer("scales", scales.float().contiguous())
        self.bias = _frozen(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The int8 kernel crashes (segfault) when `in` is not a multiple of 16: never call it then.
        if _cpu_kernels_for(x) and self.in_features % 16 == 0:
            x2 = _aligned(x.reshape(-1, self.in_features).to(torch.bfloat16))  # (B*T, in)
            y = torch.ops.aten._weight_int8pack_mm(x2, _aligned(self.weight), self.scales.to(torch.bfloat16))
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row"


class WeightOnlyInt4Linear(nn.Module):
    """y = x @ dequant(int4 groups).T + bias.

    On CPU, PyTorch's int4 kernel runs from its own packed layout, which depends on the CPU's
    instruction set (so it is never saved). Once built, it replaces the portable nibble buffer in
    memory (`weight` becomes empty), keeping int4 at half a byte per weight; the portable buffer is
    recovered exactly from the kernel layout whenever needed (saving, moving, the fallback path)."""

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, in_features: int,
                 bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape[0], in_features
        self.padded = weight.shape[1] * 2
        self.group_size = self.padded // scales.shape[1]
        self.register_buffer("weight", weight.to(torch.uint8).contiguous())
        self.register_buffer("scales", scales.float().contiguous())
        self.register_buffer("zeros", zeros.float().contiguous())
        self.bias = _frozen(bias)
        self._kernel: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    # -- the portable nibbles (what the file holds) and the kernel's layout ---------------------

    def packed_weight(self) -> torch.Tensor:
        """uint8 (out, in_padded/2), two nibbles per byte, whichever form is held now."""
        return self.weight if self.weight.numel() else self._unpack_kernel()

    def _restore_portable(self) -> None:
        if not self.weight.numel():
            self.weight = self._unpack_kernel()
        self._kernel = None

    def _kernel_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._kernel is None:
            nibbles = unpack_nibbles(self.weight).to(torch.int32)  # (out, in_p)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(nibbles, 1)
            scales_zeros = torch.stack((self.scales, self.zeros), dim=-1).transpose(0, 1)  # (groups, out, 2)
            self._kernel = (packed, scales_zeros.contiguous().to(torch.bfloat16))
            self.weight = torch.empty(0, dtype=torch.uint8, device=self.scales.device)
        return self._kernel

    def _unpack_kernel(self) -> torch.Tensor:
        """Exact inverse of the kernel's packing: multiply identity rows by the weight with scale 1 and
        zero 8, so the kernel returns the raw nibbles (integers 0..15 are exact in bf16)."""
        packed = self._kernel[0]
        groups = self.padded // self.group_size
        unit = torch.stack((torch.ones(groups, self.out_features), torch.full((groups, self.out_features), 8.0)),
                           dim=-1).to(torch.bfloat16)
        columns = []
        for start in range(0, self.padded, 256):
            rows = min(256, self.padded - start)
            eye = torch.zeros(rows, self.padded, dtype=torch.bfloat16)
            eye[torch.arange(rows), start + torch.arange(rows)] = 1
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, self.group_size, unit)  # (rows, out)
            columns.append(out.float().round().to(torch.uint8).t())
        return pack_nibbles(torch.cat(columns, dim=1))

    def _apply(self, fn, recurse=True):  # .to(device/dtype): move the portable form
        self._restore_portable()
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.packed_weight()

    def _load_from_state_dict(self, *args, **kwargs):
        self._restore_portable()
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The kernel needs out % 16 == 0 and group sizes 32..256 (inputs are padded to whole groups).
        if _cpu_kernels_for(x) and self.out_features % 16 == 0 and self.group_size in GROUP_SIZES:
            packed, scales_zeros = self._kernel_layout()
            x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
            x2 = _aligned(F.pad(x2, (0, self.padded - self.in_features)))  # zero columns meet zero pads
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, self.group_size, scales_zeros)
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        else:
            self._restore_portable()
            w = dequantize_int4(self.weight, self.scales, self.zeros, self.in_features)
            y = F.linear(x, w.to(x.dtype))
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 group={self.group_size}"


def dynamic_int8_linear(weight: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Module:
    """torch.ao's dynamic int8 Linear (what quantize_dynamic installs) holding exactly these int8 weights."""
    import torch.ao.nn.quantized.dynamic as nnqd

    out_features, in_features = weight.shape
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao (see docstring)
        warnings.simplefilter("ignore")
        module = nnqd.Linear(in_features, out_features, bias_=bias is not None, dtype=torch.qint8)
        qweight = torch._make_per_channel_quantized_tensor(
            weight.to(torch.int8), scales.double(), torch.zeros(out_features, dtype=torch.long), 0)
        module.set_weight_bias(qweight, None if bias is None else bias.detach().float())
    return module


def is_dynamic_int8(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.ao.nn.quantized.dynamic")


QUANTIZED_TYPES = (WeightOnlyInt8Linear, WeightOnlyInt4Linear)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QUANTIZED_TYPES) or is_dynamic_int8(m) for m in model.modules())


# ---- state-dict conversion ----------------------------------------------------------------------

def check_method(method: str, group_size: Optional[int]) -> None:
    if method not in METHODS:
        raise SLMError(f"quantization method {method!r} is unknown: use one of {', '.join(METHODS)}")
    if method == "int4" and group_size not in GROUP_SIZES:
        raise SLMError(f"int4 group size {group_size!r} is not supported: use one of {GROUP_SIZES}")


def plain_transformer(model: nn.Module) -> nn.Module:
    """A LoRA model is merged first (consuming the peft wrapper); anything else must be our Transformer."""
    model = merge_adapter(model)  # a plain model comes back unchanged
    if not hasattr(model, "config") or not hasattr(model, "embed_tokens"):
        raise SLMError(f"cannot quantize a {type(model).__name__}: load a model with slm_core.run.checkpoint.load_model")
    return model


def quantize_state(model: nn.Module, method: str, group_size: Optional[int] = 64) -> tuple[dict, dict]:
    """fp model → (tensors in the file's layout, {module name: kind}). Does not modify the model."""
    check_method(method, group_size)
    model = plain_transformer(model)
    if is_quantized(model):
        raise SLMError("this model is already quantized; quantize the original checkpoint instead")
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    tensors, modules = {}, {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = state.pop(f"{name}.weight")
        if method == "int4" and name != "lm_head":
            packed, scales, zeros = quantize_int4(weight, group_size)
            tensors.update({f"{name}.weight": packed, f"{name}.scales": scales, f"{name}.zeros": zeros})
            modules[name] = "int4"
        else:
            tensors[f"{name}.weight"], tensors[f"{name}.scales"] = quantize_int8(weight)
            modules[name] = "int8"
    table = state.pop("embed_tokens.weight")
    if model.config.tie_embeddings:  # lm_head's int8 rows are the token table: store them once
        tensors["embed_tokens.weight"] = tensors.pop("lm_head.weight")
        tensors["embed_tokens.scales"] = tensors.pop("lm_head.scales")
        modules["lm_head"] = "int8-tied"
    else:
        tensors["embed_tokens.weight"], tensors["embed_tokens.scales"] = quantize_int8(table)
    modules["embed_tokens"] = "int8-rows"
    tensors.update(state)  # norms, biases, position table
    return {k: v.contiguous() for k, v in tensors.items()}, modules


def quantized_state(model: nn.Module) -> tuple[dict, dict]:
    """The file layout of a model that quantize_model / load_quantized produced (exact, no re-rounding)."""
    info = getattr(model, "quantization", None)
    if info is None:
        raise SLMError("this model is not quantized: use quantize_model first, or pass method= to save_quantized")
    modules, tensors = dict(info["modules"]), {}
    skip = set()
    for name, module in model.named_modules():
        prefix = f"{name}."
        if isinstance(module, WeightOnlyInt4Linear):
            tensors.update({prefix + "weight": module.packed_weight(), prefix + "scales": module.scales,
                            prefix + "zeros": module.zeros})
        elif isinstance(module, WeightOnlyInt8Linear):
            tensors.update({prefix + "weight": module.weight, prefix + "scales": module.scales})
        elif is_dynamic_int8(module):
            qweight = module.weight()
            tensors[prefix + "weight"] = qweight.int_repr()
            tensors[prefix + "scales"] = qweight.q_per_channel_scales().float()
            if module.bias() is not None:
                tensors[prefix + "bias"] = module.bias()
            skip.add(prefix)
    for key, value in model.state_dict().items():
        if key not in tensors and not any(key.startswith(p) for p in skip):
            tensors[key] = value
    if modules.get("lm_head") == "int8-tied":
        tensors["embed_tokens.weight"] = tensors.pop("lm_head.weight")
        tensors["embed_tokens.scales"] = tensors.pop("lm_head.scales")
    else:  # exact: the in-memory table is q * s with 16-bit scales (see _round_scale_up)
        tensors["embed_tokens.weight"], tensors["embed_tokens.scales"] = quantize_int8(tensors["embed_tokens.weight"])
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, modules


def install_quantized(model: nn.Module, tensors: dict, modules: dict, method: str,
                      group_size: Optional[int]) -> nn.Module:
    """Swap model's Linear layers for quantized modules holding `tensors` (the file layout); in place.

    `model` may live on the meta device (load_quantized builds it there to skip random init)."""
    state = dict(tensors)
    table, table_scales = state.pop("embed_tokens.weight"), state.pop("embed_tokens.scales")
    if modules.get("lm_head") == "int8-tied":
        state["lm_head.weight"], state["lm_head.scales"] = table, table_scales
    float_dtype = state["norm.weight"].dtype  # the model's float dtype, also when it sits on meta
    for name, kind in modules.items():
        if name == "embed_tokens":
            continue
        parent, _, child = name.rpartition(".")
        linear = model.get_submodule(name)
        weight, scales = state.pop(f"{name}.weight"), state.pop(f"{name}.scales")
        bias = state.pop(f"{name}.bias", None)
        if method == "int8-dynamic":
            new = dynamic_int8_linear(weight, scales, bias)
        elif kind == "int4":
            new = WeightOnlyInt4Linear(weight, scales, state.pop(f"{name}.zeros"), linear.in_features, bias)
        else:
            new = WeightOnlyInt8Linear(weight, scales, bias)
        setattr(model.get_submodule(parent) if parent else model, child, new)
    embed = dequantize_int8(table, table_scales).to(float_dtype)
    model.embed_tokens.weight = nn.Parameter(embed, requires_grad=False)
    _load_rest(model, state)
    for param in model.parameters():
        param.requires_grad_(False)
    model.quantization = {"method": method, "group_size": group_size if method == "int4" else None,
                          "modules": dict(modules)}
    return model


def _load_rest(model: nn.Module, state: dict) -> None:
    """Put the float tensors (norms, biases, positions) in place by name. Not load_state_dict: torch.ao's
    dynamic Linear insists on its own keys in any state dict passed through it."""
    for key, tensor in state.items():
        owner_name, _, attr = key.rpartition(".")
        try:
            owner = model.get_submodule(owner_name)
        except AttributeError:
            owner = None
        if owner is not None and attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
        elif owner is not None and attr in owner._buffers:
            owner._buffers[attr] = tensor
        else:
            raise SLMError(f"quantized weights do not match the model config (unexpected tensor {key})")
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if leftover:
        raise SLMError(f"quantized weights are missing tensors {leftover[:3]}; quantize the model again")


def quantize_model(model: nn.Module, method: str = "int8", group_size: Optional[int] = 64) -> nn.Module:
    """Quantize in place (module swap + state-dict conversion) and return the model, in eval mode."""
    model = plain_transformer(model)
    device = model.norm.weight.device
    if method == "int8-dynamic" and device.type != "cpu":
        raise SLMError("int8-dynamic runs on CPU only (torch.ao dynamic kernels); use int8 or int4 on a GPU")
    tensors, modules = quantize_state(model, method, group_size)
    install_quantized(model, tensors, modules, method, group_size)
    return model.to(device).eval()


def dequantized_state(tensors: dict, modules: dict) -> dict:
    """The file layout back to an fp32 state dict for a plain Transformer (e.g. to export as GGUF)."""
    state = dict(tensors)
    for name, kind in modules.items():
        if kind == "int4":  # keeps the padding columns: the caller cuts to the layer's real width
            state[f"{name}.weight"] = dequantize_int4(state[f"{name}.weight"], state.pop(f"{name}.scales"),
                                                      state.pop(f"{name}.zeros"))
        elif kind in ("int8", "int8-rows"):
            state[f"{name}.weight"] = dequantize_int8(state[f"{name}.weight"], state.pop(f"{name}.scales"))
    if modules.get("lm_head") == "int8-tied":
        state["lm_head.weight"] = state["embed_tokens.weight"]
    return state


def dequantize_model(model: nn.Module) -> nn.Module:
    """A plain float Transformer with the quantized model's (rounded) weights: for HF / GGUF / ONNX export."""
    tensors, modules = quantized_state(model)
    state = dequantized_state(tensors, modules)
    plain = Transformer(model.config)
    for name, module in plain.named_modules():  # int4 rows were padded to whole groups
        if isinstance(module, nn.Linear) and f"{name}.weight" in state:
            state[f"{name}.weight"] = state[f"{name}.weight"][:, : module.in_features]
    plain.load_state_dict(state, strict=True)
    return plain.eval()


# ---- artifacts ----------------------------------------------------------------------------------

def save_quantized(model: nn.Module, config, tokenizer, out_dir: str | Path, method: Optional[str] = None,
                   group_size: Optional[int] = 64, source: Optional[str] = None, overwrite: bool = False) -> Path:
    """Write a quantized artifact folder: model.safetensors (packed weights), quantization.json
    (method, group size, per-module kinds, source), config.yaml, tokenizer/.

    `model` is either already quantized (quantize_model / load_quantized) or a float model, which is
    converted on the fly (left unmodified) with `method` / `group_size`. `config` is a RunConfig or a
    ModelConfig. The folder appears complete or not at all (written aside, then renamed)."""
    from safetensors.torch import save_file

    if is_quantized(model):
        tensors, modules = quantized_state(model)
        info = model.quantization
        if method not in (None, info["method"]):
            raise SLMError(f"this model is already quantized as {info['method']}; quantize the original for {method}")
        method, group_size = info["method"], info["group_size"]
    else:
        if method is None:
            raise SLMError("name a quantization method: " + ", ".join(METHODS))
        tensors, modules = quantize_state(model, method, group_size)
    group_size = group_size if method == "int4" else None
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT, "method": method})
        (tmp / "config.yaml").write_text(_run_config(config, model).to_yaml())
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")
        meta = {"format": FORMAT, "version": VERSION, "method": method, "group_size": group_size,
                "modules": modules, "tied_embeddings": bool(_plain_config(config, model).tie_embeddings),
                "source": None if source is None else str(source), "weights_bytes": (tmp / WEIGHTS).stat().st_size,
                "created_at": time.time(), "torch": torch.__version__}
        lineage.record_derived(tmp, source, "quantized_from", near=out_dir, tokenizer=tokenizer and tokenizer.fingerprint(),
                               details={"method": method, "group_size": group_size})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))  # last: marks a complete artifact
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise SLMError(f"{out_dir} already exists and is not empty: choose another output folder or allow overwrite")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def replace_dir(new: Path, target: Path) -> None:
    """Move a finished folder into place; an existing target is swapped out, then removed."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _plain_config(config, model):
    if isinstance(config, ModelConfig):
        return config
    return config.model if config is not None else model.config


def _run_config(config, model):
    if isinstance(config, RunConfig):
        return config
    return RunConfig(model=config if isinstance(config, ModelConfig) else model.config)


def read_quantization_meta(path: str | Path) -> dict:
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SLMError(f"{path / META_FILE} is missing or unreadable ({exc}); quantize the model again") from exc
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise SLMError(f"{path} was written by a different or newer quantizer (format {meta.get('format')!r}, "
                       f"version {meta.get('version')}); update SLM Studio or quantize again")
    check_method(meta.get("method"), meta.get("group_size"))
    return meta


# ---- command line: `slm quantize` -----------------------------------------------------------------

def artifact_dir(source_path: Path, kind: str, label: str) -> Path:
    """Where a derived artifact goes by default: <run>/<kind>/<label> for a run's checkpoint, else
    a sibling folder <source>-<label>. Nothing is written into the source itself."""
    source_path = Path(source_path)
    if source_path.parent.name == "checkpoints":
        return source_path.parent.parent / kind / label
    return source_path.with_name(f"{source_path.name}-{label}")
