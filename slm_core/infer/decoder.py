"""The native decoder: a static KV cache with one slot per sequence, `prefill` of one prompt and a batched
`step`, running the model's weights through fewer, larger, prepared ops than its forward."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from slm_core.models.decoding import (
    FAST_MAX_PARAMS,
    ONE_ROW_COPY_MAX_PARAMS,
    ONEDNN_MIN_DIM,
    one_row_half_default,
)
from slm_core.models.model import RMSNorm, base_transformer, rope_cos_sin
from slm_core.system import available_memory_mb

MAX_CACHE = 4096  # positions per slot at most: an imported model may allow 32k
# Past FAST_MAX_PARAMS, steps of up to this many rows read the bf16 copy too: fp32 ones cost several one-row steps.
BIG_HALF_MAX_ROWS = 8


def _room_for_half_copy(n_params: int) -> bool:
    """Whether free memory holds a half-precision copy of the weights (2 bytes a parameter) twice over: a model
    that barely fits decodes exactly from its own weights rather than risk the process."""
    free_mb = available_memory_mb("cpu")
    return free_mb is None or free_mb * 2**20 >= 4 * n_params


def _plain(*modules) -> bool:
    return all(type(m) is torch.nn.Linear for m in modules)  # not quantized, not wrapped by LoRA


def _in_out(w: torch.Tensor) -> torch.Tensor:
    """An (out, in) weight as the (in, out) right operand of x @ W. fp32: a contiguous transposed copy, read
    in memory order by the one-row multiply (measured ~1.5x faster than F.linear at batch 1). Other dtypes:
    the transposed view, because the bf16 kernels are 8-28x slower on an (in, out) copy on AVX2 CPUs."""
    return w.t().contiguous() if w.dtype == torch.float32 else w.t()


def _onednn_packed(w: torch.Tensor) -> Optional[torch.Tensor]:
    """An fp32 (out, in) CPU weight in oneDNN's blocked layout (what inductor's CPU freezing prepares), or None
    where oneDNN can't take it. MKL's sgemm packs its operand on every call, so a few-row multiply costs
    almost what one row per call would (4 rows ~3-4x one row, measured at 100M shapes on AVX2): batching
    several chats gained little. From a prepacked weight 4 rows cost ~1.3-2x one row, and one row of a
    wide matrix is as fast or faster."""
    if w.dtype != torch.float32 or w.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    if min(w.shape) < ONEDNN_MIN_DIM:  # too short a multiply: oneDNN's per-call cost outweighs the gain
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous())
        probe = torch.ones(2, w.shape[1])
        torch.testing.assert_close(torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], ""),
                                   F.linear(probe, w), rtol=1e-4, atol=1e-4)
        return packed
    except (RuntimeError, AssertionError, AttributeError):  # an op missing or different in this torch build
        return None


def _fp16_packed(w: torch.Tensor, bias: Optional[torch.Tensor]):
    """An fp32 (out, in) CPU weight, with its bias, prepacked for FBGEMM's fp16-weight GEMM (fp32 activations
    and accumulation, the kernel behind dynamic fp16 quantization), or None where this torch build has no such
    kernel (no FBGEMM: ARM) or it disagrees with F.linear. Against the bf16 copy it keeps 3 more mantissa bits
    and, on AVX2 CPUs without bf16 arithmetic, multiplies faster (see ONE_ROW_HALF_MIN_PARAMS)."""
    if w.dtype != torch.float32 or w.device.type != "cpu":
        return None
    try:
        packed = torch.ops.quantized.linear_prepack_fp16(w, bias)
        probe = torch.linspace(-1, 1, 2 * w.shape[1]).view(2, -1)
        expected = F.linear(probe, w, bias)
        torch.testing.assert_close(torch.ops.quantized.linear_dynamic_fp16(probe, packed), expected, rtol=0,
                                   atol=1e-2 * expected.abs().max().item() + 1e-6)
        return packed
    except (RuntimeError, AssertionError, AttributeError, NotImplementedError):
        return None


def half_copy_kind() -> str:
    """The precision of the one-row copy an fp32 model of up to FAST_MAX_PARAMS gets here: "fp16" or "bf16"."""
    return "fp16" if _fp16_packed(torch.linspace(-1, 1, 64).view(4, 16), None) is not None else "bf16"


def _half_copy(w: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple:
    """(copy, kind) of an fp32 (out, in) weight for the one-row multiplies: FBGEMM's fp16 (bias packed in)
    where the build has it, else bf16 (out, in), the layout the bf16 kernels read fast."""
    packed = _fp16_packed(w, bias)
    return (packed, "fp16") if packed is not None else (w.to(torch.bfloat16), "bf16")


def _bf16_rows(weights: list, perm: Optional[torch.Tensor]) -> torch.Tensor:
    """The (out, in) weights stacked in one bf16 matrix, rows in `perm` order. Converted straight into one
    allocation: per-weight bf16 temporaries and a concatenation made preparing a 1B model 1.9x slower (6.7 s),
    most of it faulting in fresh pages."""
    first = weights[0]
    stacked = torch.empty(sum(w.shape[0] for w in weights), first.shape[1], dtype=torch.bfloat16,
                          device=first.device)
    row = 0
    for w in weights:
        stacked[row:row + w.shape[0]].copy_(w.detach())
        row += w.shape[0]
    return stacked if perm is None else stacked[perm]


def _stacked_bias(modules: list, perm: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The modules' biases as one vector in `perm` order, or None for bias-free linears."""
    if modules[0].bias is None:
        return None
    b = torch.cat([m.bias.detach() for m in modules])
    return b if perm is None else b[perm]


class _Proj:
    """y = x @ W (+ b) for x (N, in). Plain linears become one transposed (in, out) matrix (several
    linears concatenated: one multiply instead of several), optionally with permuted output columns;
    anything else (quantized, LoRA) is called as its modules and the permutation gathered after.
    `one_row`: the copy one-row multiplies use besides oneDNN's packing: None, "fp32" or "half" (`_half_copy`;
    `half_kind` says which: "fp16" or "bf16")."""

    __slots__ = ("w", "packed", "half", "half_kind", "half_rows", "b", "modules", "perm")

    def __init__(self, modules: list, perm: Optional[torch.Tensor], fuse: bool, one_row: Optional[str] = None):
        self.w = self.packed = self.half = self.half_kind = self.b = self.perm = None
        self.half_rows = 1  # multiplies of up to this many rows read `half`
        self.modules = modules
        if fuse and _plain(*modules):
            w = torch.cat([m.weight.detach() for m in modules])  # (out, in)
            w = w if perm is None else w[perm]
            self.packed, self.b = _onednn_packed(w), _stacked_bias(modules, perm)
            if one_row == "half" and w.dtype == torch.float32:
                self.half, self.half_kind = _half_copy(w, self.b)
            self.w = _in_out(w) if self.packed is None or (one_row == "fp32" and self.half is None) else None
        elif one_row == "half" and _plain(*modules) and modules[0].weight.dtype == torch.float32:
            # A model too big for fused fp32 copies still reads its steps of up to BIG_HALF_MAX_ROWS rows from a
            # fused half-precision one (half a copy), output columns in `perm` order; more rows call the modules.
            # Always bf16: packing FBGEMM's fp16 copy of a model this size would take too long at load.
            self.perm, self.b, self.half_rows = perm, _stacked_bias(modules, perm), BIG_HALF_MAX_ROWS
            self.half, self.half_kind = _bf16_rows([m.weight for m in modules], perm), "bf16"
        else:
            self.perm = perm

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.half is not None and x.shape[0] <= self.half_rows:
            if self.half_kind == "fp16":
                return torch.ops.quantized.linear_dynamic_fp16(x, self.half)  # the bias is packed in
            y = F.linear(x.to(torch.bfloat16), self.half).float()
            return y if self.b is None else y.add_(self.b)
        if self._use_packed(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.b, "none", [], "")
        if self.w is not None:
            return torch.mm(x, self.w) if self.b is None else torch.addmm(self.b, x, self.w)
        mods = self.modules
        y = mods[0](x) if len(mods) == 1 else torch.cat([m(x) for m in mods], dim=-1)
        return y if self.perm is None else y.index_select(-1, self.perm)

    def _use_packed(self, x: torch.Tensor) -> bool:
        return self.packed is not None and (self.w is None or x.shape[0] > 1 or torch.get_num_threads() > 1)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x + proj(y): the residual add folded into the multiply where the weight allows."""
        if self.half is not None and y.shape[0] <= self.half_rows:
            return x + self(y)
        if self._use_packed(y):
            return torch.ops.mkldnn._linear_pointwise.binary(y, x, self.packed, self.b, "add")
        if self.w is not None and self.b is None:
            return torch.addmm(x, y, self.w)
        return x + self(y)


def _norm_fn(norm, dtype: torch.dtype):
    """x (N, C) → normed: one fused op for LayerNorm; RMSNorm as slm_core.models.model.RMSNorm (fp32 math)."""
    if not isinstance(norm, RMSNorm):
        return norm
    weight, eps = norm.weight.detach(), norm.eps
    if dtype == torch.float32 and weight.dtype == torch.float32:
        # mean(x²) = |x|²/C from one vector_norm kernel, + eps in the same addcmul, rsqrt in place on the
        # (N, 1) scale: cheaper than F.rms_norm for one row, within an ulp of RMSNorm.
        eps_t, inv_c = torch.tensor(eps, device=weight.device), 1.0 / weight.shape[0]

        def rms(x: torch.Tensor) -> torch.Tensor:
            n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
            return x * torch.addcmul(eps_t, n, n, value=inv_c).rsqrt_() * weight

        return rms
    return lambda x: weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _interleave(heads: int, head_dim: int) -> torch.Tensor:
    """Output columns of `heads` heads reordered from (first halves, second halves) to (x0, x_{D/2}, x1, …)."""
    half = torch.arange(head_dim // 2)
    within = torch.stack((half, half + head_dim // 2), dim=1).reshape(-1)  # (D,)
    return (torch.arange(heads)[:, None] * head_dim + within).reshape(-1)


class _Layer:
    """One block's prepared weights and its decode math over 2-D activations (N = B*T rows, C)."""

    def __init__(self, layer, cfg, fuse: bool, dtype: torch.dtype, rope: bool, device, one_row: Optional[str]):
        attn, mlp = layer.self_attn, layer.mlp
        self.H, self.KV, self.D = attn.n_head, attn.n_kv_head, attn.head_dim
        qk = self.H + self.KV
        perm = None
        if rope:  # permute q and k heads to interleaved pairs; v (and everything else) stays
            perm = torch.cat((_interleave(qk, self.D), torch.arange(qk * self.D, (qk + self.KV) * self.D)))
            perm = perm.to(device)
        self.qkv = _Proj([attn.q_proj, attn.k_proj, attn.v_proj], perm, fuse, one_row)
        self.o = _Proj([attn.o_proj], None, fuse, one_row)
        self.qk_norm = None
        if getattr(cfg, "qk_norm", False):  # Qwen3: per-head RMSNorm over (D,), weights permuted like q/k
            order = _interleave(1, self.D) if rope else torch.arange(self.D)
            self.qk_norm = [(n.weight.detach()[order.to(device)], n.eps) for n in (attn.q_norm, attn.k_norm)]
        self.norm1 = _norm_fn(layer.input_layernorm, dtype)
        self.norm2 = _norm_fn(layer.post_attention_layernorm, dtype)
        self.swiglu = mlp.swiglu
        self.up = _Proj([mlp.gate_proj, mlp.up_proj] if mlp.swiglu else [mlp.up_proj], None, fuse, one_row)
        self.down = _Proj([mlp.down_proj], None, fuse, one_row)
        self.d_ff = cfg.d_ff

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(self.norm2(x))
        if self.swiglu:
            h = F.silu(h[:, :self.d_ff]) * h[:, self.d_ff:]
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2's gelu_new
        return self.down.add(x, h)

    def split(self, qkv: torch.Tensor, freqs: Optional[torch.Tensor]) -> tuple:
        """qkv (N, (H+2KV)·D) → q (N, H, D), k (N, KV, D) rotated, v (N, KV, D)."""
        N, H, KV, D = qkv.shape[0], self.H, self.KV, self.D
        qk = qkv[:, :(H + KV) * D].view(N, H + KV, D)
        if self.qk_norm is not None:
            (wq, eq), (wk, ek) = self.qk_norm
            qk = torch.cat((wq * F.rms_norm(qk[:, :H].float(), (D,), eps=eq).to(qk.dtype),
                            wk * F.rms_norm(qk[:, H:].float(), (D,), eps=ek).to(qk.dtype)), dim=1)
        if freqs is not None:  # freqs (N, 1, D/2) complex: one multiply rotates every q and k head
            pairs = (qk if qk.dtype == torch.float32 else qk.float()).reshape(N, H + KV, D // 2, 2)
            qk = torch.view_as_real(torch.view_as_complex(pairs) * freqs).view(N, H + KV, D)
            qk = qk if qkv.dtype == torch.float32 else qk.to(qkv.dtype)  # bf16: rotated in fp32, cast back
        return qk[:, :H], qk[:, H:], qkv[:, (H + KV) * D:].view(N, KV, D)


class Decoder:
    """A static KV cache with `slots` rows, and the prefill / batched-step passes that fill it."""

    def __init__(self, model: torch.nn.Module, slots: int = 1, max_len: Optional[int] = None,
                 compile: bool = False, one_row_half: Optional[bool] = None):
        """`one_row_half`: one-row steps read a half-precision copy of an fp32 model's matrices (None: by size, see
        ONE_ROW_HALF_MIN_PARAMS; False keeps every step in exact fp32)."""
        self.model = model
        self.core = core = base_transformer(model)
        cfg = self.config = core.config
        self.device = core.norm.weight.device  # not the embedding: a quantized model may keep it in int8
        self.dtype = core.norm.weight.dtype
        self.slots = slots
        self.max_len = min(cfg.context_length, max_len or cfg.context_length, MAX_CACHE)
        shape = (slots, cfg.n_kv_head, self.max_len, cfg.head_dim)
        self.cache = [(torch.zeros(shape, dtype=self.dtype, device=self.device),
                       torch.zeros(shape, dtype=self.dtype, device=self.device)) for _ in core.layers]
        # Per slot views, made once: a batch-1 step writes and reads through them without indexing ops.
        self.slot_views = [[(k[s], v[s], k[s:s + 1], v[s:s + 1]) for s in range(slots)] for k, v in self.cache]
        self.freqs = None
        if cfg.position != "learned":
            cos, sin = rope_cos_sin(cfg, torch.arange(self.max_len, device=self.device))
            half = cfg.head_dim // 2  # (max_len, D/2) complex: e^{i·angle} of each interleaved pair
            self.freqs = torch.complex(cos[:, :half].float(), sin[:, :half].float())
        self.gqa = cfg.n_kv_head != cfg.n_head
        n_params = sum(p.numel() for p in core.parameters())
        small = n_params <= FAST_MAX_PARAMS
        if one_row_half is None:
            one_row_half = one_row_half_default(n_params, self.dtype, self.device) and _room_for_half_copy(n_params)
        one_row = "half" if one_row_half else "fp32" if n_params <= ONE_ROW_COPY_MAX_PARAMS else None
        self.layers = [_Layer(layer, cfg, small, self.dtype, self.freqs is not None, self.device, one_row)
                       for layer in core.layers]
        self.norm = _norm_fn(core.norm, self.dtype)
        self.head = _Proj([core.lm_head], None, small, one_row)  # the widest one-row multiply of a small model
        self.half_kind = self.head.half_kind  # the one-row copy's precision: "fp16", "bf16" or None (no copy)
        self.projs = [p for layer in self.layers for p in (layer.qkv, layer.o, layer.up, layer.down)] + [self.head]
        embed = core.embed_tokens
        self.embed_w = embed.weight.detach() if type(embed) is torch.nn.Embedding else None
        self.pos_w = core.embed_positions.weight.detach() if cfg.position == "learned" else None
        self.arange = torch.arange(self.max_len, device=self.device)
        self._compiled = None
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs on GPU
            self._compiled = torch.compile(self._static_step, mode=mode, fullgraph=False, dynamic=False)

    @property
    def one_row_half(self) -> bool:
        """Whether one-row steps read a half-precision copy."""
        return self.half_kind is not None

    # ---- the two passes -------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, slot: int, tokens: list[int]) -> torch.Tensor:
        """Write `tokens` (positions 0..T-1) into `slot`; logits (V,) fp32 of the last position."""
        T = len(tokens)
        ids = torch.tensor(tokens, device=self.device)
        x = self._embed(ids, self.arange[:T])
        freqs = None if self.freqs is None else self.freqs[:T, None]
        views = [v[slot] for v in self.slot_views]
        for layer, (k_slot, v_slot, k_read, v_read) in zip(self.layers, views):
            q, k, v = layer.split(layer.qkv(layer.norm1(x)), freqs)  # (T, H, D), (T, KV, D), (T, KV, D)
            k_slot[:, :T].copy_(k.transpose(0, 1))
            v_slot[:, :T].copy_(v.transpose(0, 1))
            y = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k_read[:, :, :T], v_read[:, :, :T],
                                               is_causal=T > 1, enable_gqa=self.gqa)  # (1, H, T, D)
            x = layer.mlp(layer.o.add(x, y[0].transpose(0, 1).reshape(T, -1)))
        return self._head(x[-1:])[0].float()

    @torch.inference_mode()
    def extend(self, slot: int, tokens: list[int], start: int) -> torch.Tensor:
        """Write `tokens` at positions start..start+T-1 of `slot`, each attending to the cache before it and to
        the tokens before it → logits (T, V) fp32, one row per token. Speculative decoding's verification pass
        (slm_core.infer.speculative): whatever the cache held from `start` on is overwritten, which is how a
        rejected draft is rolled back (positions past a sequence's length are never read before written)."""
        T = len(tokens)
        if T == 1:  # the one-row step's own kernels and weight copy: the same numbers as plain decoding
            return self._step_one(slot, tokens[0], start)
        if self.half_kind is not None:  # plain decoding reads the half copy: so does its verification
            kept = [p.half_rows for p in self.projs]
            for p in self.projs:
                p.half_rows = max(p.half_rows, T)
            try:
                return self._extend(slot, tokens, start)
            finally:
                for p, rows in zip(self.projs, kept):
                    p.half_rows = rows
        return self._extend(slot, tokens, start)

    def _extend(self, slot: int, tokens: list[int], start: int) -> torch.Tensor:
        T = len(tokens)
        end = start + T
        if end > self.max_len:
            raise ValueError(f"positions {start}..{end - 1} run past this cache's {self.max_len}")
        pos = self.arange[start:end]
        x = self._embed(torch.tensor(tokens, device=self.device), pos)
        freqs = None if self.freqs is None else self.freqs[start:end, None]
        mask = (self.arange[:end][None] <= pos[:, None])[None, None]  # (1, 1, T, end): causal from `start` on
        views = [v[slot] for v in self.slot_views]
        for layer, (k_slot, v_slot, k_read, v_read) in zip(self.layers, views):
            q, k, v = layer.split(layer.qkv(layer.norm1(x)), freqs)  # (T, H, D), (T, KV, D), (T, KV, D)
            k_slot[:, start:end].copy_(k.transpose(0, 1))
            v_slot[:, start:end].copy_(v.transpose(0, 1))
            y = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k_read[:, :, :end], v_read[:, :, :end],
                                               attn_mask=mask, enable_gqa=self.gqa)  # (1, H, T, D)
            x = layer.mlp(layer.o.add(x, y[0].transpose(0, 1).reshape(T, -1)))
        return self._head(x).float()

    @torch.inference_mode()
    def step(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One new token per slot at its own position → logits (B, V) fp32."""
        if self._compiled is not None:
            return self._compiled_step(slots, tokens, positions)
        if len(slots) == 1:
            return self._step_one(slots[0], tokens[0], positions[0])
        B = len(slots)
        ids = torch.tensor(tokens, device=self.device)
        pos = torch.tensor(positions, device=self.device)  # (B,)
        end = max(positions) + 1
        mask = None
        if min(positions) + 1 != end:  # rows at different positions: each sees keys <= its own position
            mask = (self.arange[:end][None] <= pos[:, None])[:, None, None]  # (B, 1, 1, end)
        rows = torch.tensor(slots, device=self.device)
        read = slice(slots[0], slots[0] + B) if slots == list(range(slots[0], slots[0] + B)) else rows
        return self._batched(ids, pos, rows, read, end, mask)

    def _step_one(self, slot: int, token: int, p: int) -> torch.Tensor:
        """Batch 1, one token: cache writes through views, no index tensors (the `slm generate` path)."""
        x = self._embed_one(token, p)
        freqs = None if self.freqs is None else self.freqs[p].view(1, 1, -1)
        H, end = self.config.n_head, p + 1
        views = [v[slot] for v in self.slot_views]
        for layer, (k_slot, v_slot, k_read, v_read) in zip(self.layers, views):
            q, k, v = layer.split(layer.qkv(layer.norm1(x)), freqs)  # (1, H, D), (1, KV, D), (1, KV, D)
            k_slot.select(1, p).copy_(k[0])
            v_slot.select(1, p).copy_(v[0])
            y = F.scaled_dot_product_attention(q.view(1, H, 1, -1), k_read[:, :, :end], v_read[:, :, :end],
                                               enable_gqa=self.gqa)  # (1, H, 1, D)
            x = layer.mlp(layer.o.add(x, y.reshape(1, -1)))
        return self._head(x).float()

    def _batched(self, ids, pos, rows, read, end: int, mask) -> torch.Tensor:
        """ids, pos (B,); rows (B,) cache rows to write, `read` the same rows as a slice or index; attention
        over cache positions [0, end) under `mask` (B, 1, 1, end) → logits (B, V)."""
        B, H = ids.shape[0], self.config.n_head
        x = self._embed(ids, pos)
        freqs = None if self.freqs is None else self.freqs[pos][:, None]  # (B, 1, D/2)
        for layer, (k_cache, v_cache) in zip(self.layers, self.cache):
            q, k, v = layer.split(layer.qkv(layer.norm1(x)), freqs)
            k_cache[rows, :, pos] = k  # advanced indices on dims 0 and 2: (B, KV, D) per (row, position)
            v_cache[rows, :, pos] = v
            y = F.scaled_dot_product_attention(q.view(B, H, 1, -1), k_cache[read, :, :end], v_cache[read, :, :end],
                                               attn_mask=mask, enable_gqa=self.gqa)  # (B, H, 1, D)
            x = layer.mlp(layer.o.add(x, y.reshape(B, -1)))
        return self._head(x).float()

    def _embed(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """ids, pos (N,) → (N, C) in the compute dtype."""
        x = (self.embed_w[ids] if self.embed_w is not None else self.core.embed_tokens(ids)).to(self.dtype)
        return x if self.pos_w is None else x + self.pos_w[pos].to(self.dtype)

    def _embed_one(self, token: int, p: int) -> torch.Tensor:
        if self.embed_w is None:
            return self._embed(torch.tensor([token], device=self.device), self.arange[p:p + 1])
        x = self.embed_w[token].view(1, -1).to(self.dtype)
        return x if self.pos_w is None else x + self.pos_w[p].to(self.dtype)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))

    # ---- compiled, static shapes ------------------------------------------------------------------

    def _compiled_step(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        ids = torch.zeros(self.slots, dtype=torch.long, device=self.device)
        pos = torch.zeros(self.slots, dtype=torch.long, device=self.device)
        index = torch.tensor(slots, device=self.device)
        ids[index] = torch.tensor(tokens, device=self.device)
        pos[index] = torch.tensor(positions, device=self.device)
        logits = self._compiled(ids, pos)
        return logits[index].float()

    def _static_step(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """ids, pos (slots,). Every slot, the whole cache, a mask: one shape for every call, so it compiles
        once. Idle slots write position 0 of their own row, which the next prefill overwrites."""
        mask = (self.arange[None] <= pos[:, None])[:, None, None]  # (S, 1, 1, L)
        rows = torch.arange(self.slots, device=self.device)
        return self._batched(ids, pos, rows, slice(0, self.slots), self.max_len, mask)
