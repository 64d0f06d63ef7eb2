"""One decoder-only Transformer for the GPT-2 and Llama families, switched by ModelConfig fields, with Hugging
Face Llama layer names and a preallocated KV cache for generation."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from slm_core.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as Llama does, then cast back (matters under bf16 autocast).
        x_fp32 = x.float()
        normed = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def make_norm(config: ModelConfig, dim: Optional[int] = None) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(dim or config.d_model, config.norm_eps)
    return nn.LayerNorm(dim or config.d_model, eps=config.norm_eps, bias=config.bias)


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,).

    'dynamic' is NTK-aware scaling: a model trained at context_length/factor runs at context_length
    with a raised base. The base is fixed by context_length rather than recomputed per sequence
    length (as Hugging Face's dynamic variant does) so cached decoding equals the full forward pass.
    """
    dim, base = config.head_dim, config.rope_theta
    if config.rope_scaling == "dynamic" and config.rope_scaling_factor > 1:
        factor = config.rope_scaling_factor
        base = base * (2 * factor - 1) ** (dim / (dim - 2))  # HF's formula at seq_len = context_length
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    return llama3_inv_freq(config, inv_freq) if config.rope_scaling == "llama3" else inv_freq


def llama3_inv_freq(config: ModelConfig, inv_freq: torch.Tensor) -> torch.Tensor:
    """Llama 3.1's scaling: wavelengths longer than original_context/low_freq_factor are slowed by
    `factor`, those shorter than original_context/high_freq_factor are kept, and the band between
    is blended linearly (Meta's reference code, as transformers computes it)."""
    factor, low, high = config.rope_scaling_factor, config.rope_low_freq_factor, config.rope_high_freq_factor
    old_context = config.rope_original_context
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return torch.where(medium, blended, scaled)


def rope_cos_sin(config: ModelConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, head_dim) for the given absolute positions (T,)."""
    inv_freq = rope_inv_freq(config).to(positions.device)
    pos = positions.float()
    if config.rope_scaling == "linear":
        pos = pos / config.rope_scaling_factor
    angles = torch.outer(pos, inv_freq)  # (T, head_dim/2)
    angles = torch.cat((angles, angles), dim=-1)  # Llama's half-rotation layout
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); rotate the two halves of each head (the layout HF Llama checkpoints use).
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCache(nn.Module):
    """Preallocated keys/values (B, n_kv_head, max_len, head_dim), written at absolute positions."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, end: int):
        self.k[:, :, input_pos] = k.to(self.k.dtype)
        self.v[:, :, input_pos] = v.to(self.v.dtype)
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        q_dim, kv_dim = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
        self.q_proj = nn.Linear(config.d_model, q_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.d_model, kv_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.d_model, kv_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_dim, config.d_model, bias=config.bias)
        if config.qk_norm:  # Qwen3: one RMSNorm over each head's (head_dim,) query and key
            self.q_norm = RMSNorm(config.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.norm_eps)
        self.kv_cache: Optional[KVCache] = None

    def forward(self, x: torch.Tensor, rope: Optional[tuple], input_pos: Optional[torch.Tensor],
                end: int = 0) -> torch.Tensor:
        """With input_pos (T,), keys/values go into the cache and attention spans positions [0, end)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)  # (B, T, H, D)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, KV, D)
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, D), (B, KV, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)

        mask, is_causal = None, True
        if input_pos is not None and self.kv_cache is not None:
            k, v = self.kv_cache.update(input_pos, k, v, end)
            if T == 1:
                is_causal = False  # one new token sees every cached position
            elif end != T:  # a chunk after a prefix
                # A chunk after a prefix: row i sees positions <= input_pos[i].
                mask = torch.arange(end, device=x.device)[None, :] <= input_pos[:, None]
                is_causal = False
        dropout = self.config.dropout if self.training else 0.0
        # GQA: each KV head serves n_head/n_kv_head query heads; SDPA reads them in place (no repeated copy)
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, dropout_p=dropout,
                                           is_causal=is_causal and mask is None,
                                           enable_gqa=self.n_kv_head != self.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))  # GPT-2's gelu_new


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = make_norm(config)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope=None, input_pos=None, end=0):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), rope, input_pos, end))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer) before building the model")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        if config.position == "learned":
            self.embed_positions = nn.Embedding(config.context_length, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.tie_weights()
        self.gradient_checkpointing = False
        if self.embed_tokens.weight.is_meta:  # built to receive loaded weights: random init would be thrown away
            return
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2*n_layer).
        for name, param in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(param, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def tie_weights(self) -> None:
        """Share the input embedding with lm_head (again after load_state_dict(assign=True) replaced it)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, trainable_only: bool = False) -> int:
        # named_parameters() already counts a tied embedding once.
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def get_input_embeddings(self) -> nn.Module:  # used by peft
        return self.embed_tokens

    def setup_kv_cache(self, batch_size: int, max_len: Optional[int] = None, dtype=None) -> None:
        max_len = min(max_len or self.config.context_length, self.config.context_length)
        param = self.norm.weight  # not the embedding: a quantized model may keep that table in int8
        for layer in self.layers:
            layer.self_attn.kv_cache = KVCache(batch_size, self.config.n_kv_head, max_len, self.config.head_dim,
                                               dtype or param.dtype, param.device)

    def clear_kv_cache(self) -> None:
        for layer in self.layers:
            layer.self_attn.kv_cache = None

    def forward(self, input_ids: torch.Tensor, input_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids (B, T) → logits (B, T, vocab). With input_pos (T,) the KV cache is used."""
        B, T = input_ids.shape
        end = 0
        if input_pos is None:
            if T > self.config.context_length:
                raise ValueError(f"sequence of {T} tokens exceeds the context length {self.config.context_length}")
            positions = torch.arange(T, device=input_ids.device)
        else:
            positions = input_pos
            end = int(input_pos[-1]) + 1  # one host sync per forward, not one per layer
        x = self.embed_tokens(input_ids)
        rope = None
        if self.config.position == "learned":
            x = x + self.embed_positions(positions)
        else:
            cos, sin = rope_cos_sin(self.config, positions)
            rope = (cos.to(x.dtype), sin.to(x.dtype))
        x = self.drop(x)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, rope, input_pos, end, use_reentrant=False)
            else:
                x = layer(x, rope, input_pos, end)
        return self.lm_head(self.norm(x))


# ---- wrappers: DDP, torch.compile, peft ----------------------------------------------------------

def is_peft(model: nn.Module) -> bool:
    # Duck-typed so callers need not import peft just to ask.
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP (`.module`) and torch.compile (`._orig_mod`) wrappers; a peft model stays a peft model."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def base_transformer(model: nn.Module) -> nn.Module:
    """The Transformer underneath any wrapper: where `setup_kv_cache`/`clear_kv_cache` and `.config` live.

    Under peft the LoRA layers are injected into this very module, so calling it (or the peft
    wrapper, which forwards `input_pos=` unchanged) runs base + adapter, unmerged.
    """
    model = unwrap(model)
    return model.get_base_model() if is_peft(model) else model


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights → a plain Transformer (for a standalone checkpoint,
    quantization or export). Consumes the peft model: its base is the returned module."""
    model = unwrap(model)
    if not is_peft(model):
        return model
    return model.merge_and_unload()
