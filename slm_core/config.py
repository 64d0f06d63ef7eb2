"""Settings as plain dataclasses (model, tokenizer, data, training, distillation, LoRA), each validated on
construction; recipes and `--set` overrides parsed against the declared types. No torch."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, get_args, get_origin, get_type_hints

import yaml

from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_text

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
    rope_scaling: Optional[str] = None  # None | linear | dynamic | llama3
    rope_scaling_factor: float = 1.0
    # llama3 scaling (Llama 3.1/3.2): frequencies between these wavelength bounds are blended
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: Optional[int] = None  # llama3: the context the model was pretrained at
    head_size: Optional[int] = None  # None: d_model // n_head (Qwen3, Mistral-Nemo set their own)
    qk_norm: bool = False  # Qwen3: per-head RMSNorm on queries and keys before RoPE
    # config.json of the Hugging Face checkpoint this model came from, kept so an export writes
    # the same fields back (rope scaling, bos/eos ids, ...) and other tools see the same model
    hf_config: Optional[dict] = None
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
        if self.head_size is None:
            _require(self.d_model % self.n_head == 0, "model.d_model", self.d_model,
                     f"the width must be divisible by the number of heads ({self.n_head})")
        else:
            _require(self.head_size >= 1, "model.head_size", self.head_size, "must be at least 1")
        _require(self.n_head % self.n_kv_head == 0, "model.n_kv_head", self.n_kv_head,
                 f"the number of heads ({self.n_head}) must be divisible by the number of KV heads")
        _require(self.norm in ("layernorm", "rmsnorm"), "model.norm", self.norm, "use 'layernorm' or 'rmsnorm'")
        _require(self.mlp in ("gelu", "swiglu"), "model.mlp", self.mlp, "use 'gelu' or 'swiglu'")
        _require(self.position in ("learned", "rope"), "model.position", self.position, "use 'learned' or 'rope'")
        _require(self.rope_scaling in (None, "linear", "dynamic", "llama3"), "model.rope_scaling",
                 self.rope_scaling, "use null, 'linear', 'dynamic' or 'llama3'")
        if self.rope_scaling == "llama3":
            _require(bool(self.rope_original_context), "model.rope_original_context", self.rope_original_context,
                     "llama3 RoPE scaling needs the original pretraining context")
            _require(self.rope_high_freq_factor > self.rope_low_freq_factor, "model.rope_high_freq_factor",
                     self.rope_high_freq_factor, "must exceed rope_low_freq_factor")
        _require(self.rope_scaling_factor >= 1.0, "model.rope_scaling_factor", self.rope_scaling_factor,
                 "must be at least 1.0")
        if self.position == "rope":
            _require(self.head_dim % 2 == 0, "model.d_model", self.d_model, "RoPE needs an even head size")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "must be in [0, 1)")
        for name in ("norm_eps", "rope_theta", "init_std"):
            _require(getattr(self, name) > 0, f"model.{name}", getattr(self, name), "must be positive")
        if self.vocab_size is not None:
            _require(self.vocab_size >= 2, "model.vocab_size", self.vocab_size, "must be at least 2")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.n_head

    def to_dict(self) -> dict:
        # peft reads a model's `config` through to_dict(); also handy for metadata.
        return dataclasses.asdict(self)


@dataclass
class TokenizerConfig:
    kind: str = "bpe"  # gpt2 | bpe (trained on the corpus) | char
    vocab_size: int = 4096  # for kind=bpe
    path: Optional[str] = None  # gpt2: folder holding vocab.bpe + encoder.json (offline); any: a saved tokenizer
    # bpe/char: characters streamed from the start of the corpus to train on (~a minute of BPE training on
    # a laptop; the statistics of a 4k-50k vocabulary settle long before); bounds time and memory
    train_chars: int = 100_000_000

    def __post_init__(self) -> None:
        _require(self.kind in ("gpt2", "bpe", "char"), "tokenizer.kind", self.kind, "use 'gpt2', 'bpe' or 'char'")
        _require(self.train_chars >= 1000, "tokenizer.train_chars", self.train_chars, "use at least 1000 characters")
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
    template: Optional[str] = None  # None: plain text; 'alpaca' | 'chatml' | 'model' (the base's own chat template)
    # how a plain text file becomes documents: 'paragraph' (blank lines; <|endoftext|> markers win when the
    # file has them), 'line', 'whole' (the file is one document), or any other string as the separator
    split: str = "paragraph"
    max_documents: Optional[int] = None  # stop after this many documents (a Hub stream's first N)
    max_tokens: Optional[int] = None  # stop at the first chunk boundary past this many tokens

    def __post_init__(self) -> None:
        _require(bool(str(self.source).strip()), "data.source", self.source, "name a file, folder, 'builtin' or a Hub dataset")
        _require(0.0 < self.val_fraction < 0.5, "data.val_fraction", self.val_fraction, "must be in (0, 0.5)")
        _require(bool(self.split), "data.split", self.split, "use 'paragraph', 'line', 'whole' or a separator")
        for name in ("max_documents", "max_tokens", "max_chars"):
            _require(getattr(self, name) is None or getattr(self, name) >= 1, f"data.{name}", getattr(self, name),
                     "use a positive number, or null for no limit")
        _require(self.template in (None, "alpaca", "chatml", "model"), "data.template", self.template,
                 "use null, 'alpaca', 'chatml' or 'model' (the base model's own chat template)")


PREFERENCE_MODES = ("dpo", "orpo")  # trained on preference pairs (slm_core.train.preference)


@dataclass
class TrainConfig:
    mode: str = "pretrain"  # pretrain | distill | lora | finetune | grpo (see GRPOConfig) | dpo | orpo (PreferenceConfig)
    init_from: Optional[str] = None  # run dir, checkpoint dir or Hugging Face folder (finetune/lora/distill student)
    max_steps: int = 500
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | linear | constant | wsd (warmup, stable, then a linear decay)
    decay_fraction: float = 0.2  # wsd: the share of max_steps spent decaying to lr * min_lr_ratio
    optimizer: str = "adamw"  # adamw | muon (Muon on 2-D hidden matrices, AdamW on the rest)
    muon_lr: Optional[float] = None  # Muon's peak lr (None: train.lr; Muon's update RMS matches AdamW's)
    muon_momentum: float = 0.95
    target_val_loss: Optional[float] = None  # stop once the validation loss reaches this ("good enough")
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    grad_checkpointing: bool = False
    strategy: str = "ddp"  # ddp | fsdp: how several processes share the work (one process ignores it)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    eval_interval: int = 100
    eval_batches: int = 20
    ckpt_interval: int = 100
    sample_prompts: list = field(default_factory=lambda: ["Once upon a time"])
    sample_tokens: int = 48
    early_stop_patience: int = 0  # >0: stop after this many evaluations without a new best
    seed: int = 1337
    force: bool = False  # start even when the memory estimate exceeds the device by far (resources.preflight)

    def __post_init__(self) -> None:
        _require(self.mode in ("pretrain", "distill", "lora", "finetune", "grpo", *PREFERENCE_MODES), "train.mode",
                 self.mode, "use 'pretrain', 'distill', 'lora', 'finetune', 'grpo', 'dpo' or 'orpo'")
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batches", "ckpt_interval"):
            _require(getattr(self, name) >= 1, f"train.{name}", getattr(self, name), "must be at least 1")
        _require(self.lr > 0, "train.lr", self.lr, "must be positive")
        _require(0 <= self.warmup_steps, "train.warmup_steps", self.warmup_steps, "must be 0 or more")
        _require(self.schedule in ("cosine", "linear", "constant", "wsd"), "train.schedule", self.schedule,
                 "use 'cosine', 'linear', 'constant' or 'wsd'")
        _require(0.0 < self.decay_fraction <= 1.0, "train.decay_fraction", self.decay_fraction, "must be in (0, 1]")
        _require(self.optimizer in ("adamw", "muon"), "train.optimizer", self.optimizer, "use 'adamw' or 'muon'")
        _require(self.muon_lr is None or self.muon_lr > 0, "train.muon_lr", self.muon_lr, "must be positive")
        _require(self.strategy in ("ddp", "fsdp"), "train.strategy", self.strategy,
                 "use 'ddp' (a full copy of the model per process) or 'fsdp' (weights, gradients and "
                 "optimizer state sharded across processes)")
        _require(self.precision in ("auto", "fp32", "bf16", "fp16"), "train.precision", self.precision,
                 "use 'auto', 'fp32', 'bf16' or 'fp16'")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        for name in ("weight_decay", "grad_clip", "sample_tokens", "early_stop_patience"):
            _require(getattr(self, name) >= 0, f"train.{name}", getattr(self, name), "must be 0 or more")
        for name in ("beta1", "beta2"):
            _require(0.0 <= getattr(self, name) < 1.0, f"train.{name}", getattr(self, name), "must be in [0, 1)")
        _require(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(self.device)) is not None, "train.device",
                 self.device, "use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        _require(all(isinstance(p, str) for p in self.sample_prompts), "train.sample_prompts", self.sample_prompts,
                 "give a list of prompt strings")


@dataclass
class DistillConfig:
    teacher: Optional[str] = None  # run name/dir, checkpoint dir, or Hugging Face causal-LM folder
    alpha: float = 0.5  # weight of the KD term; 1-alpha goes to cross-entropy on the labels
    temperature: float = 2.0
    # "shrink this model": the student is the teacher with this many of its layers (slm_core.train.shrink), sharing
    # its tokenizer; null (or 0) distills into the recipe's model instead
    shrink_layers: Optional[int] = None

    def __post_init__(self) -> None:
        if self.shrink_layers == 0:
            self.shrink_layers = None
        _require(self.shrink_layers is None or self.shrink_layers >= 1, "distill.shrink_layers", self.shrink_layers,
                 "give the student's layer count (1 up to the teacher's), or null for no shrinking")
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
    quantize_base: str = "none"  # none | int8 | int4: QLoRA, the frozen base held in weight-only int8/int4

    def __post_init__(self) -> None:
        _require(self.r >= 1, "lora.r", self.r, "must be at least 1")
        _require(self.quantize_base in ("none", "int8", "int4"), "lora.quantize_base", self.quantize_base,
                 "use 'none', 'int8' or 'int4'")
        _require(self.alpha > 0, "lora.alpha", self.alpha, "must be positive")
        _require(0.0 <= self.dropout < 1.0, "lora.dropout", self.dropout, "must be in [0, 1)")
        if isinstance(self.targets, str) and "," in self.targets:
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        if isinstance(self.targets, str):
            _require(self.targets in LORA_TARGETS, "lora.targets", self.targets,
                     "use 'attention', 'mlp', 'all' or a comma-separated list of module names")

    @property
    def target_modules(self) -> list:
        return LORA_TARGETS[self.targets] if isinstance(self.targets, str) else list(self.targets)


GRPO_REWARDS = ("last_number", "exact_match", "format", "length", "custom")
CUSTOM_REWARD = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass
class GRPOConfig:
    """train.mode=grpo: reinforcement learning from rewards a program computes (slm_core.train.grpo).
    train.batch_size is the number of prompts per step; each gets `group_size` sampled completions."""
    # builtin:arithmetic (offline) | a JSONL/CSV/Parquet file with prompt+reference (or question+answer) columns |
    # a Hub dataset of that shape by name (GSM8K-style, e.g. openai/gsm8k:main; needs the network)
    prompts: str = "builtin:arithmetic"
    group_size: int = 8
    # last_number (the answer's last number equals the reference) | exact_match | format (format_regex or
    # format_schema) | length (a penalty past length_target tokens) | custom (custom_reward) | module:function
    rewards: list = field(default_factory=lambda: ["last_number"])
    reward_weights: Optional[list] = None  # None: 1 for each reward
    custom_reward: Optional[str] = None  # module:function, imported in the training process (never fetched)
    format_regex: Optional[str] = None  # format: the completion must match this (re.search)
    format_schema: Optional[str] = None  # format: the completion must be JSON valid under this schema (JSON text)
    length_target: int = 32  # length: completions longer than this many tokens lose reward in proportion
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0  # 0: the whole vocabulary
    kl_beta: float = 0.04  # weight of the KL to the reference (the start model; with LoRA the adapter disabled)
    lora: bool = True  # LoRA adapters (the lora section) on the start model; false: full fine-tuning
    sample_rows: int = 4  # completions per step written to the sample table (samples.jsonl)

    def __post_init__(self) -> None:
        _require(bool(str(self.prompts).strip()), "grpo.prompts", self.prompts,
                 "use 'builtin:arithmetic', a JSONL/CSV/Parquet file or a Hub dataset name")
        _require(self.group_size >= 2, "grpo.group_size", self.group_size,
                 "use at least 2 completions per prompt (advantages compare a group's rewards)")
        if isinstance(self.rewards, (str, list)):  # "a,b" from --set or the Studio's checkboxes: split
            items = [self.rewards] if isinstance(self.rewards, str) else self.rewards
            self.rewards = [r.strip() for item in items for r in str(item).split(",") if r.strip()]
        _require(isinstance(self.rewards, list) and bool(self.rewards) and all(isinstance(r, str) for r in self.rewards),
                 "grpo.rewards", self.rewards, f"give a list of reward names ({', '.join(GRPO_REWARDS)}) or module:function")
        for name in self.rewards:
            _require(name in GRPO_REWARDS or CUSTOM_REWARD.fullmatch(name) is not None, "grpo.rewards", name,
                     f"use {', '.join(GRPO_REWARDS)}, or module:function for a reward of your own")
        if "custom" in self.rewards:
            _require(bool(self.custom_reward), "grpo.custom_reward", self.custom_reward,
                     "the 'custom' reward needs grpo.custom_reward=module:function")
        _require(self.custom_reward is None or CUSTOM_REWARD.fullmatch(self.custom_reward) is not None,
                 "grpo.custom_reward", self.custom_reward, "write it as module:function, e.g. my_rewards:score")
        if "format" in self.rewards:
            _require(bool(self.format_regex or self.format_schema), "grpo.rewards", "format",
                     "the 'format' reward needs grpo.format_regex or grpo.format_schema")
        if self.format_regex:
            try:
                re.compile(self.format_regex)
            except re.error as error:
                raise SLMError(f"grpo.format_regex={self.format_regex!r} is not a valid regular expression "
                               f"({error}): fix it") from None
        if self.format_schema:
            try:
                json.loads(self.format_schema)
            except json.JSONDecodeError as error:
                raise SLMError(f"grpo.format_schema is not JSON ({error.msg}): give the schema as JSON text") from None
        _require(self.reward_weights is None or (isinstance(self.reward_weights, list) and
                                                 len(self.reward_weights) == len(self.rewards)),
                 "grpo.reward_weights", self.reward_weights, f"give one weight per reward ({len(self.rewards)}), or null")
        for name in ("max_new_tokens", "length_target", "sample_rows"):
            _require(getattr(self, name) >= (0 if name == "sample_rows" else 1), f"grpo.{name}", getattr(self, name),
                     "must be at least 1" if name != "sample_rows" else "must be 0 or more")
        _require(self.temperature > 0, "grpo.temperature", self.temperature,
                 "must be positive (completions of a group must differ)")
        _require(self.top_k >= 0, "grpo.top_k", self.top_k, "must be 0 (off) or more")
        _require(self.kl_beta >= 0, "grpo.kl_beta", self.kl_beta, "must be 0 or more")


@dataclass
class PreferenceConfig:
    """train.mode dpo | orpo: preference pairs (prompt, chosen, rejected) read from data.source."""
    beta: float = 0.1  # dpo: how far from the reference the policy may move (lower: further); orpo: odds-ratio weight
    loss: str = "sigmoid"  # dpo: sigmoid (DPO) | ipo | hinge, as TRL names them
    lora: bool = True  # adapters on a frozen base, whose output with the adapter off is the reference; false: full

    def __post_init__(self) -> None:
        _require(self.beta > 0, "preference.beta", self.beta, "must be positive (0.1 is usual)")
        _require(self.loss in ("sigmoid", "ipo", "hinge"), "preference.loss", self.loss,
                 "use 'sigmoid' (DPO), 'ipo' or 'hinge'")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    preset: Optional[str] = None  # the recipe this came from, for the runs table

    @property
    def uses_lora(self) -> bool:
        """Whether LoRA adapters train on a frozen base (mode 'lora', or a preference mode with preference.lora, or
        grpo with grpo.lora)."""
        return self.train.mode == "lora" or (self.train.mode in PREFERENCE_MODES and self.preference.lora) or \
            (self.train.mode == "grpo" and self.grpo.lora)

    def check_ready(self) -> None:
        """What a run needs beyond valid fields; recipes may leave these for the user to fill in."""
        if self.train.mode in ("lora", "finetune", "grpo", *PREFERENCE_MODES):
            _require(bool(self.train.init_from), "train.init_from", self.train.init_from,
                     f"mode '{self.train.mode}' needs a base model: a run name, checkpoint folder or Hugging Face folder")
        if self.train.mode == "distill":
            _require(bool(self.distill.teacher), "distill.teacher", self.distill.teacher,
                     "distillation needs a teacher: a run name, checkpoint folder or Hugging Face folder")
            _require(not (self.distill.shrink_layers and self.train.init_from), "train.init_from",
                     self.train.init_from, "with distill.shrink_layers the student is the shrunk teacher: "
                     "leave train.init_from unset (or set distill.shrink_layers=null)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, raw: dict) -> "RunConfig":
        if raw is not None and not isinstance(raw, dict):
            raise SLMError(f"a recipe must be a mapping of sections (model:, data:, train:, ...), got a "
                           f"{type(raw).__name__}: write it as 'section:' lines with 'key: value' under each")
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
            number = float(value)
            if not math.isfinite(number):
                raise SLMError(f"{key}={value!r} is not a finite number: give a plain number like 0.001")
            return number
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

def user_recipes_dir() -> Path:
    """Recipes a person saved ("save as my recipe" in the Studio): $SLM_RECIPES_DIR or ~/.config/slm/recipes.
    `slm presets`, `--preset NAME` and the Studio list them beside the built-in ones."""
    import os

    return Path(os.environ.get("SLM_RECIPES_DIR") or "~/.config/slm/recipes").expanduser()


def save_user_recipe(name: str, config: "RunConfig", description: str = "") -> Path:
    """Write `config` as the user recipe `name` (a built-in recipe's name is refused)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name or ""):
        raise SLMError(f"recipe name {name!r} is invalid: use letters, digits, '.', '_' or '-'")
    if (PRESETS_DIR / "recipes" / f"{name}.yaml").exists():
        raise SLMError(f"'{name}' is a built-in recipe: pick another name for yours")
    raw = {"description": description or "saved from the Studio", **config.to_dict()}
    raw.pop("preset", None)
    folder = user_recipes_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    atomic_write_text(path, yaml.safe_dump(raw, sort_keys=False))  # a half-written recipe is never listed
    return path


def _preset_path(kind: str, name: str) -> Path:
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise SLMError(f"{kind[:-1]} file {path} not found: check the path, or name a preset "
                           f"({', '.join(list_presets(kind))})")
        return path
    candidate = PRESETS_DIR / kind / f"{name}.yaml"
    if not candidate.exists() and kind == "recipes" and (user_recipes_dir() / f"{name}.yaml").exists():
        candidate = user_recipes_dir() / f"{name}.yaml"
    if not candidate.exists():
        raise SLMError(f"no {kind[:-1]} preset named '{name}'; available: {', '.join(list_presets(kind))}")
    return candidate


def _preset_name(name: str) -> str:
    # "llama-3.2-1b" has dots: only strip a real .yaml suffix.
    return Path(name).stem if name.endswith((".yaml", ".yml")) else name


def list_presets(kind: str) -> list[str]:
    """kind: 'models' or 'recipes' (the built-in ones and, for recipes, the user's own)."""
    names = {p.stem for p in (PRESETS_DIR / kind).glob("*.yaml")}
    if kind == "recipes":
        names |= {p.stem for p in user_recipes_dir().glob("*.yaml")}
    return sorted(names)


def _model_preset_fields(name: str) -> dict:
    """The preset's own fields, before derived defaults (d_ff, n_kv_head) are filled in."""
    raw = read_yaml_mapping(_preset_path("models", name), "model preset")
    raw.pop("description", None)
    raw.setdefault("name", _preset_name(name))
    return raw


def read_yaml_mapping(path: str | Path, what: str = "recipe") -> dict:
    """A YAML file whose top level is a mapping (or empty), else SLMError naming the file and line."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SLMError(f"{what} file {path} not found: check the path") from None
    except IsADirectoryError:
        raise SLMError(f"{what} file {path} is a folder: give the .yaml file inside it") from None
    except UnicodeDecodeError:
        raise SLMError(f"{what} file {path} is not UTF-8 text: give a YAML file") from None
    except OSError as error:
        raise SLMError(f"cannot read {what} file {path}: {error.strerror or error}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SLMError(f"{what} file {path}{where} is not valid YAML ({problem}): fix the syntax there") from None
    if raw is not None and not isinstance(raw, dict):
        raise SLMError(f"{what} file {path} holds a {type(raw).__name__} at the top level: it must be a mapping "
                       "of 'key: value' lines (see presets/ for examples)")
    return raw or {}


def load_model_preset(name: str) -> ModelConfig:
    return _build(ModelConfig, _model_preset_fields(name), "model")


def load_recipe(name: str, overrides: Optional[list[str]] = None) -> RunConfig:
    """A recipe preset (or a YAML path) with optional section.key=value overrides applied."""
    raw = read_yaml_mapping(_preset_path("recipes", name))
    raw.pop("description", None)
    raw.setdefault("preset", _preset_name(name))
    config = RunConfig.from_dict(raw)
    return config.with_overrides(overrides) if overrides else config


def preset_description(kind: str, name: str) -> str:
    raw = read_yaml_mapping(_preset_path(kind, name), "preset")
    return str(raw.get("description", "")).strip()


def load_run_config(path: str | Path) -> RunConfig:
    return RunConfig.from_dict(read_yaml_mapping(path, "config"))
