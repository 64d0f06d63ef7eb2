"""Settings as plain dataclasses: model shape, tokenizer, data, training, distillation, LoRA.

Imports no torch, so the Studio and `slm presets` stay light. Every dataclass validates in
`__post_init__` and raises SLMError naming the field and its value. A recipe YAML maps
section by section onto `RunConfig`; `--set section.key=value` overrides are parsed against
the field's declared type, never eval'd.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, get_args, get_origin, get_type_hints

import yaml

from slm_core.errors import SLMError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"

FAMILY_DEFAULTS = {
    # GPT-2: learned positions, LayerNorm, GELU MLP, biases, tied embeddings.
    "gpt2": dict(norm="layernorm", mlp="gelu", position="learned", bias=True, tie_embeddings=True),
    # Llama-3.2: RoPE, RMSNorm, SwiGLU, no biases (tied embeddings at the 1B/3B sizes).
    "llama": dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False, tie_embeddings=True),
}


def _require(ok: bool, name: str, value: Any, hint: str) -> None:
    if not ok:
        raise SLMError(f"{name}={value!r} is invalid: {hint}")


@dataclass
class ModelConfig:
    name: str = "custom"
    family: str = "llama"
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: Optional[int] = None  # None: same as n_head (multi-head attention)
    d_model: int = 256
    d_ff: Optional[int] = None  # None: 4*d_model (gelu) or Llama's 8/3*d_model rounded (swiglu)
    context_length: int = 256
    vocab_size: Optional[int] = None  # None: taken from the tokenizer when the run starts
    norm: Optional[str] = None  # layernorm | rmsnorm (None: family default)
    mlp: Optional[str] = None  # gelu | swiglu
    position: Optional[str] = None  # learned | rope
    bias: Optional[bool] = None
    qkv_bias: Optional[bool] = None  # None: same as bias (Qwen2 has biases on q/k/v only)
    tie_embeddings: Optional[bool] = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[str] = None  # None | linear | dynamic
    rope_scaling_factor: float = 1.0
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        _require(self.family in FAMILY_DEFAULTS, "model.family", self.family, "use 'gpt2' or 'llama'")
        for key, value in FAMILY_DEFAULTS[self.family].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.qkv_bias is None:
            self.qkv_bias = self.bias
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None:
            if self.mlp == "swiglu":  # Llama: 2/3 of 4*d, rounded up to a multiple of 64
                self.d_ff = 64 * ((int(8 * self.d_model / 3) + 63) // 64)
            else:
                self.d_ff = 4 * self.d_model
        for name in ("n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "context_length"):
            _require(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), "must be at least 1")
        _require(self.d_model % self.n_head == 0, "model.d_model", self.d_model,
                 f"the width must be divisible by the number of heads ({self.n_head})")
        _require(self.n_head % self.n_kv_head == 0, "model.n_kv_head", self.n_kv_head,
                 f"the number of heads ({self.n_head}) must be divisible by the number of KV heads")
        _require(self.norm in ("layernorm", "rmsnorm"), "model.norm", self.norm, "use 'layernorm' or 'rmsnorm'")
        _require(self.mlp in ("gelu", "swiglu"), "model.mlp", self.mlp, "use 'gelu' or 'swiglu'")
        _require(self.position in ("learned", "rope"), "model.position", self.position, "use 'learned' or 'rope'")
        _require(self.rope_scaling in (None, "linear", "dynamic"), "model.rope_scaling", self.rope_scaling,
                 "use null, 'linear' or 'dynamic'")
        _require(self.rope_scaling_factor >= 1.0, "model.rope_scaling_factor", self.rope_scaling_factor,
                 "must be at least 1.0")
        if self.position == "rope":
            _require(self.head_dim % 2 == 0, "model.d_model", self.d_model, "RoPE needs an even head size")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "must be in [0, 1)")
        if self.vocab_size is not None:
            _require(self.vocab_size >= 2, "model.vocab_size", self.vocab_size, "must be at least 2")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        # peft reads a model's `config` through to_dict(); also handy for metadata.
        return dataclasses.asdict(self)


@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # gpt2 | bpe (trained on the corpus) | char
    vocab_size: int = 4096  # for kind=bpe
    path: Optional[str] = None  # gpt2: folder holding vocab.bpe + encoder.json (offline); any: a saved tokenizer

    def __post_init__(self) -> None:
        _require(self.kind in ("gpt2", "bpe", "char"), "tokenizer.kind", self.kind, "use 'gpt2', 'bpe' or 'char'")
        if self.kind == "bpe":
            _require(256 <= self.vocab_size <= 65536, "tokenizer.vocab_size", self.vocab_size,
                     "a trained BPE needs between 256 and 65536 tokens")


@dataclass
class DataConfig:
    # "builtin" (generated stories), "builtin:instructions", a local file/folder, or a Hub name
    source: str = "builtin"
    text_column: Optional[str] = None  # None: 'text', else the first string column
    hub_split: str = "train"
    val_fraction: float = 0.05
    max_chars: Optional[int] = None  # cap on characters read, for quick experiments
    # instruction data (Alpaca or chat 'messages' records): the prompt template to train with
    template: Optional[str] = None  # None: plain text; 'alpaca' | 'chatml'

    def __post_init__(self) -> None:
        _require(bool(str(self.source).strip()), "data.source", self.source, "name a file, folder, 'builtin' or a Hub dataset")
        _require(0.0 < self.val_fraction < 0.5, "data.val_fraction", self.val_fraction, "must be in (0, 0.5)")
        _require(self.template in (None, "alpaca", "chatml"), "data.template", self.template,
                 "use null, 'alpaca' or 'chatml'")


@dataclass
class TrainConfig:
    mode: str = "pretrain"  # pretrain | distill | lora | finetune
    init_from: Optional[str] = None  # run dir, checkpoint dir or Hugging Face folder (finetune/lora/distill student)
    max_steps: int = 500
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    grad_checkpointing: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    eval_interval: int = 100
    eval_batches: int = 20
    ckpt_interval: int = 100
    sample_prompts: list = field(default_factory=lambda: ["Once upon a time"])
    sample_tokens: int = 48
    early_stop_patience: int = 0  # >0: stop after this many evaluations without a new best
    seed: int = 1337

    def __post_init__(self) -> None:
        _require(self.mode in ("pretrain", "distill", "lora", "finetune"), "train.mode", self.mode,
                 "use 'pretrain', 'distill', 'lora' or 'finetune'")
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batches", "ckpt_interval"):
            _require(getattr(self, name) >= 1, f"train.{name}", getattr(self, name), "must be at least 1")
        _require(self.lr > 0, "train.lr", self.lr, "must be positive")
        _require(0 <= self.warmup_steps, "train.warmup_steps", self.warmup_steps, "must be 0 or more")
        _require(self.schedule in ("cosine", "linear", "constant"), "train.schedule", self.schedule,
                 "use 'cosine', 'linear' or 'constant'")
        _require(self.precision in ("auto", "fp32", "bf16", "fp16"), "train.precision", self.precision,
                 "use 'auto', 'fp32', 'bf16' or 'fp16'")


@dataclass
class DistillConfig:
    teacher: Optional[str] = None  # run name/dir, checkpoint dir, or Hugging Face causal-LM folder
    alpha: float = 0.5  # weight of the KD term; 1-alpha goes to cross-entropy on the labels
    temperature: float = 2.0

    def __post_init__(self) -> None:
        _require(0.0 <= self.alpha <= 1.0, "distill.alpha", self.alpha, "must be in [0, 1]")
        _require(self.temperature > 0, "distill.temperature", self.temperature, "must be positive")


LORA_TARGETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],  # GELU MLPs have only up_proj and down_proj
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: Any = "attention"  # attention | mlp | all | a list of module names

    def __post_init__(self) -> None:
        _require(self.r >= 1, "lora.r", self.r, "must be at least 1")
        _require(0.0 <= self.dropout < 1.0, "lora.dropout", self.dropout, "must be in [0, 1)")
        if isinstance(self.targets, str) and "," in self.targets:
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        if isinstance(self.targets, str):
            _require(self.targets in LORA_TARGETS, "lora.targets", self.targets,
                     "use 'attention', 'mlp', 'all' or a comma-separated list of module names")

    @property
    def target_modules(self) -> list:
        return LORA_TARGETS[self.targets] if isinstance(self.targets, str) else list(self.targets)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    preset: Optional[str] = None  # the recipe this came from, for the runs table

    def check_ready(self) -> None:
        """What a run needs beyond valid fields; recipes may leave these for the user to fill in."""
        if self.train.mode in ("lora", "finetune"):
            _require(bool(self.train.init_from), "train.init_from", self.train.init_from,
                     f"mode '{self.train.mode}' needs a base model: a run name, checkpoint folder or Hugging Face folder")
        if self.train.mode == "distill":
            _require(bool(self.distill.teacher), "distill.teacher", self.distill.teacher,
                     "distillation needs a teacher: a run name, checkpoint folder or Hugging Face folder")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, raw: dict) -> "RunConfig":
        raw = dict(raw or {})
        model_raw = raw.get("model") or {}
        if isinstance(model_raw, str):  # a recipe may name a model preset...
            model_raw = {"preset": model_raw}
        if "preset" in model_raw:  # ...and change some of its fields
            changes = {k: v for k, v in model_raw.items() if k != "preset"}
            model_raw = {**_model_preset_fields(model_raw["preset"]), **changes}
        sections = {}
        for f in fields(cls):
            value = raw.pop(f.name, None)
            if f.name == "model":
                value = model_raw
            if f.name == "preset":
                sections["preset"] = value
                continue
            section_cls = get_type_hints(cls)[f.name]
            sections[f.name] = _build(section_cls, value or {}, f.name)
        if raw:
            raise SLMError(f"unknown config section(s) {sorted(raw)}: use {[f.name for f in fields(cls)]}")
        return cls(**sections)

    def with_overrides(self, overrides: list[str]) -> "RunConfig":
        raw = self.to_dict()
        for item in overrides:
            key, value = parse_override(item)
            section, _, name = key.partition(".")
            if section not in raw or not isinstance(raw[section], dict):
                raise SLMError(f"--set {item!r}: unknown section '{section}'; use one of "
                               f"{[k for k, v in raw.items() if isinstance(v, dict)]}")
            section_cls = get_type_hints(RunConfig)[section]
            hints = get_type_hints(section_cls)
            if name not in hints:
                raise SLMError(f"--set {item!r}: '{section}' has no field '{name}'; fields: {sorted(hints)}")
            raw[section][name] = coerce(value, hints[name], key)
        return RunConfig.from_dict(raw)


def _build(section_cls, values: dict, section: str):
    if not isinstance(values, dict):
        raise SLMError(f"config section '{section}' must be a mapping, got {values!r}")
    hints = get_type_hints(section_cls)
    unknown = set(values) - set(hints)
    if unknown:
        raise SLMError(f"'{section}' has no field(s) {sorted(unknown)}; fields: {sorted(hints)}")
    return section_cls(**{k: coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})


def parse_override(item: str) -> tuple[str, str]:
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise SLMError(f"--set {item!r}: write it as section.key=value, e.g. train.max_steps=200")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Turn a YAML or command-line value into the field's declared type, or raise SLMError."""
    if get_origin(hint) is Optional or (get_origin(hint) is not None and type(None) in get_args(hint)):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        hint = next(a for a in get_args(hint) if a is not type(None))
    if hint is Any:
        return _parse_scalar(value) if isinstance(value, str) else value
    try:
        if isinstance(value, bool) and hint in (int, float):
            raise ValueError  # YAML's `true` is not a step count or a learning rate
        if hint is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if hint is list or get_origin(hint) is list:
            if isinstance(value, list):
                return value
            text = str(value).strip()
            if text.startswith("["):  # a JSON/YAML list; anything else is one item, taken literally
                parsed = _parse_scalar(text)
                if isinstance(parsed, list):
                    return parsed
            return [value]
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise SLMError(f"{key}={value!r} is not a valid {getattr(hint, '__name__', hint)}")


def _parse_scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return yaml.safe_load(text) if text else text


# ---- presets -------------------------------------------------------------------------------

def _preset_path(kind: str, name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = PRESETS_DIR / kind / f"{name}.yaml"
    if not candidate.exists():
        raise SLMError(f"no {kind[:-1]} preset named '{name}'; available: {', '.join(list_presets(kind))}")
    return candidate


def _preset_name(name: str) -> str:
    # "llama-3.2-1b" has dots: only strip a real .yaml suffix.
    return Path(name).stem if name.endswith((".yaml", ".yml")) else name


def list_presets(kind: str) -> list[str]:
    """kind: 'models' or 'recipes'."""
    return sorted(p.stem for p in (PRESETS_DIR / kind).glob("*.yaml"))


def _model_preset_fields(name: str) -> dict:
    """The preset's own fields, before derived defaults (d_ff, n_kv_head) are filled in."""
    raw = yaml.safe_load(_preset_path("models", name).read_text()) or {}
    raw.pop("description", None)
    raw.setdefault("name", _preset_name(name))
    return raw


def load_model_preset(name: str) -> ModelConfig:
    return _build(ModelConfig, _model_preset_fields(name), "model")


def load_recipe(name: str, overrides: Optional[list[str]] = None) -> RunConfig:
    """A recipe preset (or a YAML path) with optional section.key=value overrides applied."""
    raw = yaml.safe_load(_preset_path("recipes", name).read_text()) or {}
    raw.pop("description", None)
    raw.setdefault("preset", _preset_name(name))
    config = RunConfig.from_dict(raw)
    return config.with_overrides(overrides) if overrides else config


def preset_description(kind: str, name: str) -> str:
    raw = yaml.safe_load(_preset_path(kind, name).read_text()) or {}
    return str(raw.get("description", "")).strip()


def load_run_config(path: str | Path) -> RunConfig:
    return RunConfig.from_dict(yaml.safe_load(Path(path).read_text()))
