"""Size, memory, compute and time estimates for a model shape before anything is trained: parameters counted on
the meta device, activation memory tensor by tensor, step time from a measured matmul rate."""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

from slm_core import system
from slm_core.config import LoRAConfig, ModelConfig
from slm_core.errors import SLMError
from slm_core.system import MB, cpu_has_native_bf16

# Used when model.vocab_size is still None (the tokenizer decides it): a character vocabulary.
NOMINAL_VOCAB = 256
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int4": 0.5}
# Peak RSS over the tensor peak on CPU (glibc keeps freed blocks), the top measured: benchmarks/bench_model_memory.py
CPU_ALLOCATOR_SLACK = 1.6

_FLOPS_CACHE: dict = {}
_PARAM_CACHE: dict = {}  # repr(ModelConfig) -> counts: estimates ask for the same shape many times


# ---- parameters ------------------------------------------------------------------------------

def resolve_vocab(config: ModelConfig) -> tuple[ModelConfig, Optional[str]]:
    """The config with a vocabulary size filled in, and a note when it had to be assumed."""
    if config.vocab_size is not None:
        return config, None
    note = (f"model.vocab_size is set by the tokenizer when the run starts; these figures assume "
            f"{NOMINAL_VOCAB} tokens (a character vocabulary)")
    return dataclasses.replace(config, vocab_size=NOMINAL_VOCAB), note


def count_parameters(config: ModelConfig) -> dict:
    """{"total", "embedding", "non_embedding", "lm_head_matmul", "vocab_size", "note"}.

    Built on the meta device, so even a 1B shape allocates nothing. `embedding` is the token
    table (shared with the output layer when tied) plus learned positions; `lm_head_matmul` is
    the output layer's V*d weights, which do take part in every token's matrix multiplies.
    """
    config, note = resolve_vocab(config)
    shape = dataclasses.asdict(config)
    if config.position != "learned":  # the context length adds no parameters
        shape.pop("context_length")
    key = repr(sorted(shape.items()))
    if key not in _PARAM_CACHE:
        _PARAM_CACHE[key] = _count_parameters(config)
    return {**_PARAM_CACHE[key], "note": note}


def _count_parameters(config: ModelConfig) -> dict:
    # torch (the model module) only here, so the estimates' readers (`slm presets`, the Hub browser's fit) start
    # without it.
    import torch

    from slm_core.models.model import Transformer


    # Blocks are identical, so two suffice: the count takes milliseconds even for n_layer=100000
    # (the memory pre-flight check refuses such a shape before anything is built).
    with torch.device("meta"):
        model = Transformer(dataclasses.replace(config, n_layer=min(config.n_layer, 2)))
        total = model.num_parameters()
        if config.n_layer > 2:
            per_block = total - Transformer(dataclasses.replace(config, n_layer=1)).num_parameters()
            total += (config.n_layer - 2) * per_block
    embedding = model.embed_tokens.weight.numel()
    if config.position == "learned":
        embedding += model.embed_positions.weight.numel()
    if not config.tie_embeddings:
        embedding += model.lm_head.weight.numel()
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding,
            "lm_head_matmul": config.vocab_size * config.d_model, "vocab_size": config.vocab_size}


def linear_weight_count(config: ModelConfig) -> int:
    """Weights of every nn.Linear including lm_head: what autocast copies to bf16/fp16 in a forward."""
    kv_dim, q_dim = config.n_kv_head * config.head_dim, config.n_head * config.head_dim  # Qwen3: q_dim != d_model
    attn = 2 * config.d_model * q_dim + 2 * config.d_model * kv_dim
    mlp = (3 if config.mlp == "swiglu" else 2) * config.d_model * config.d_ff
    return config.n_layer * (attn + mlp) + config.vocab_size * config.d_model


def lora_parameters(config: ModelConfig, lora: LoRAConfig) -> int:
    """Trainable parameters LoRA adds: r*(in+out) for every targeted linear in every layer."""
    config, _ = resolve_vocab(config)
    d, f, kv = config.d_model, config.d_ff, config.n_kv_head * config.head_dim
    shapes = {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
              "up_proj": (d, f), "down_proj": (f, d)}
    if config.mlp == "swiglu":
        shapes["gate_proj"] = (d, f)
    per_layer = sum(lora.r * (i + o) for name, (i, o) in shapes.items() if name in lora.target_modules)
    return config.n_layer * per_layer


def compute_optimal_tokens(n_params: float) -> int:
    """Chinchilla's rule of thumb (Hoffmann et al. 2022): about 20 training tokens per parameter."""
    return int(round(20 * n_params))


def flops_per_token(config: ModelConfig, context: Optional[int] = None) -> dict:
    """Training FLOPs per token, as in the PaLM appendix / nanoGPT's MFU estimate.

    6 FLOPs per matmul weight (2 forward, 4 backward) over the weights that multiply (every
    linear, lm_head included; embedding lookups are free), plus 12*L*d*T for the attention
    scores and the weighted sum of values at context T (the causal half is not discounted,
    following PaLM). Forward-only is a third of each term.
    """
    config, _ = resolve_vocab(config)
    T = context or config.context_length
    matmul_params = linear_weight_count(config)  # norms and biases (a rounding error) left out
    attention = 12 * config.n_layer * config.d_model * T
    train = 6 * matmul_params + attention
    return {"train": float(train), "forward": float(train / 3), "matmul_params": matmul_params,
            "attention": float(attention)}


# ---- memory ----------------------------------------------------------------------------------

def default_device() -> str:
    """Where `train.device=auto` would train. Asks NVML and torch's build, not the CUDA runtime, so
    the Studio's server process never initialises CUDA just to draw an estimate."""
    import torch

    return "cuda" if torch.backends.cuda.is_built() and system.gpu_info() else "cpu"


def uses_autocast(precision: str, device: str = "cpu") -> bool:
    """Whether training runs under bf16/fp16 autocast (fp32 master weights either way).

    'auto' follows train.resolve_precision: always on CUDA, on CPU only where bf16 is native.
    """
    if precision not in PRECISIONS:
        raise SLMError(f"precision={precision!r} is invalid: use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision != "fp32"
    if str(device).startswith("cuda"):
        return True

    return cpu_has_native_bf16()


def _layer_activation_bytes(config: ModelConfig, T: int, amp: bool, device: str) -> float:
    """Bytes one block keeps for backward, per token, in training (dropout active if configured).

    What autograd saves (checked with saved_tensors_hooks): the residual stream before each
    sub-block (fp32: the embeddings are fp32 and the adds promote); per norm, its statistics
    (RMSNorm also its fp32 normalised input) and its output as the next linears' input (fp32
    once, or under autocast one bf16 copy per consuming linear: q, k and v each cast their own);
    q, k, v (GQA's k/v at their own n_kv_head width: SDPA reads them without repeating) and the
    attention output, plus a log-sum-exp per head (flash / memory-efficient SDPA keep no T x T
    matrix); and the MLP's hidden tensors (2 for GELU, 4 for SwiGLU) in the compute dtype.
    """
    d, f, H = config.d_model, config.d_ff, config.n_head
    a = 2 if amp else 4  # bytes of a tensor computed in the autocast dtype
    mlp_inputs = 2 if config.mlp == "swiglu" else 1  # linears reading the second norm's output
    total = 2 * 4 * d  # residual stream entering attention and entering the MLP
    for consumers in (3, mlp_inputs):
        total += (4 * d + 4) if config.norm == "rmsnorm" else 8  # normalised input + rsqrt | mean, rstd
        total += consumers * 2 * d if amp else 4 * d
    total += (4 if config.mlp == "swiglu" else 2) * a * f
    cuda = str(device).startswith("cuda")
    if config.dropout > 0 and not cuda:
        # CPU SDPA has no fused dropout: its math path works in fp32 and keeps q, k, v, the T x T
        # probabilities, the dropout mask and the dropped probabilities, plus the output's copy.
        total += 3 * 4 * d + a * d + 3 * 4 * H * T
    else:
        kv = config.n_kv_head * config.head_dim
        total += a * (2 * d + 2 * kv) + 4 * H  # q, k, v, attention output, log-sum-exp per head
    if config.dropout > 0:
        total += 2 * d * (1 if cuda else a)  # residual dropout masks: bool on CUDA, the data's dtype on CPU
    return float(total)


def _activation_bytes(config: ModelConfig, batch: int, T: int, amp: bool, checkpointing: bool,
                      device: str) -> tuple[float, float]:
    """(kept, recomputed) bytes for one micro-batch, the logits aside (see `_logits_bytes`).

    kept: what stays alive from the forward into the backward. recomputed: with gradient
    checkpointing, the one block whose activations backward rebuilds at a time (0 without).
    """
    tokens = batch * T
    layer = _layer_activation_bytes(config, T, amp, device)
    block_inputs = config.n_layer * 4 * config.d_model  # checkpointing keeps each block's fp32 input only
    final_norm = 4 * config.d_model + ((4 * config.d_model + 4) if config.norm == "rmsnorm" else 8)
    final_norm += (2 if amp else 4) * config.d_model  # lm_head's input
    ids = 16  # int64 input ids (embedding) and targets (the loss)
    embed_dropout = 4 * config.d_model if config.dropout > 0 else 0
    # Shared by all tokens: RoPE's cos and sin (T, head_dim) fp32, or the int64 position ids.
    positions = 2 * T * config.head_dim * 4 if config.position == "rope" else 8 * T
    outside = tokens * (final_norm + ids + embed_dropout) + positions
    if checkpointing:
        return tokens * block_inputs + outside, tokens * layer
    return tokens * config.n_layer * layer + outside, 0.0


def _logits_bytes(config: ModelConfig, batch: int, T: int, distill: bool = False) -> float:
    """Peak of the loss over (B, T, V), reached in its backward: the saved fp32 log-probabilities,
    the gradient coming in from the NLL and the gradient going out of log_softmax, 3 x 4 bytes
    (under autocast the bf16 logits are freed before then, so the same 12 bytes hold).
    Distillation (slm_core.train.distill.distillation_loss) keeps three fp32 (B, T, V) tensors for
    backward (the plain and the tempered student log-probs, the teacher's log-probs), and its
    backward holds up to five more at once (KL's gradient, each branch's, their sum): 8 x 4 bytes."""
    return (32.0 if distill else 12.0) * batch * T * config.vocab_size


def training_memory(config: ModelConfig, batch_size: int, precision: str = "fp32", grad_checkpointing: bool = False,
                    trainable_fraction: float = 1.0, context: Optional[int] = None, grad_accum: int = 1,
                    device: Optional[str] = None, teacher: Optional[ModelConfig] = None,
                    optimizer_kind: str = "adamw", strategy: str = "ddp", world_size: int = 1) -> dict:
    """Peak memory of a training step in MB for one process (one GPU), by component, plus "total_mb".

    strategy/world_size: DDP keeps a full replica per process, so every process needs what one
    process alone would (its gradients live in DDP's buckets, no second copy). FSDP over
    world_size > 1 processes: see `_fsdp_peaks`.

    AdamW over fp32 master weights (bf16/fp16 autocast changes the activations, not the
    weights), steady state (from the second step, when the optimizer's two moments exist).
    trainable_fraction < 1 (LoRA) shrinks gradients and optimizer state; activations are taken
    as for full training (frozen linears keep no inputs, but LoRA's dropout and adapters keep
    some: roughly a wash). The peak is the larger of two moments: the start of
    backward (all activations and the loss's buffers alive, the first gradient allocated) and
    the optimizer step (all gradients alive). Gradients fill in as activations are freed, so
    the components do not simply add up. teacher (distillation): adds the frozen teacher's fp32
    weights and the loss's extra (B, T, V) buffers.
    """
    config, note = resolve_vocab(config)
    device = str(device or default_device())
    amp = uses_autocast(precision, device)
    T = min(context or config.context_length, config.context_length)
    n = count_parameters(config)["total"]
    trainable = n * trainable_fraction
    weights = 4.0 * n
    grads = 4.0 * trainable
    optimizer = 8.0 * trainable  # exp_avg and exp_avg_sq, fp32
    if optimizer_kind == "muon" and trainable_fraction >= 1.0:
        # Muon keeps one momentum buffer for the blocks' matrices (AdamW keeps two for the rest);
        # LoRA's factors stay on AdamW (slm_core.train.optim), so a LoRA run is unchanged.
        hidden = linear_weight_count(config) - config.vocab_size * config.d_model
        optimizer -= 4.0 * hidden
    kept, recomputed = _activation_bytes(config, batch_size, T, amp, grad_checkpointing, device)
    logits = _logits_bytes(config, batch_size, T, distill=teacher is not None)
    teacher_weights = 4.0 * count_parameters(teacher)["total"] if teacher is not None else 0.0
    weights += teacher_weights
    copies = recompute_copies = 0.0
    if amp:  # autocast's bf16 copies of the weights, kept for backward
        lm_head = config.vocab_size * config.d_model
        per_layer = (linear_weight_count(config) - lm_head) / config.n_layer
        copies = 2.0 * (lm_head + (0 if grad_checkpointing else per_layer * config.n_layer))
        recompute_copies = 2.0 * per_layer if grad_checkpointing else 0.0
    # Backward begins with lm_head's weight gradient; with grad_accum > 1 every gradient already exists.
    first_grad = 4.0 * config.vocab_size * config.d_model if trainable_fraction >= 1.0 else 0.0
    grads_in_backward = grads if grad_accum > 1 else first_grad
    # CPU AdamW (single-tensor path) makes a few temporaries the size of the parameter it is updating.
    largest = max(config.vocab_size, config.d_ff) * config.d_model
    step_temp = 0.0 if device.startswith("cuda") else 2 * 4.0 * largest * min(trainable_fraction, 1.0)
    # The loss's buffers are freed before backward reaches the blocks, so with checkpointing the
    # block being recomputed never coexists with them.
    gathered = 0.0
    if strategy == "fsdp" and world_size > 1:
        sharded = _fsdp_peaks(config, n, trainable_fraction, world_size, grad_accum,
                              gather_bf16=amp and device.startswith("cuda") and precision != "fp16")
        weights, grads, optimizer = teacher_weights + (weights - teacher_weights) / world_size, grads / world_size, \
            optimizer / world_size
        gathered, grads_in_backward, step_temp = sharded["gathered"], sharded["grads_in_backward"], step_temp / world_size
        if sharded["gather_bf16"]:  # weights arrive in bf16 already: autocast makes no copies of them
            copies = recompute_copies = 0.0
    backward_peak = (weights + optimizer + kept + copies + grads_in_backward + gathered
                     + max(logits, recomputed + recompute_copies))
    step_peak = weights + optimizer + grads + step_temp
    return {"weights_mb": (weights - teacher_weights) / MB, "teacher_mb": teacher_weights / MB,
            "gathered_mb": gathered / MB, "strategy": strategy if world_size > 1 else "single",
            "world_size": world_size,
            "gradients_mb": grads / MB, "optimizer_mb": optimizer / MB,
            "activations_mb": (kept + recomputed) / MB, "logits_mb": logits / MB,
            "autocast_copies_mb": (copies + recompute_copies) / MB,
            "total_mb": max(backward_peak, step_peak) / MB,
            "peak_at": "backward" if backward_peak >= step_peak else "optimizer step",
            "batch_size": batch_size, "context": T, "precision": precision, "autocast": amp,
            "grad_checkpointing": grad_checkpointing, "device": device, "note": note}


def _fsdp_peaks(config: ModelConfig, n: float, trainable_fraction: float, world_size: int, grad_accum: int,
                gather_bf16: bool) -> dict:
    """What FSDP2 (slm_core.train.fsdp: one unit per block, the rest as the root) adds on each rank over its
    1/world_size shards, in bytes. Gathered weights: the root (embeddings, final norm, head) stays
    unsharded from the start of the forward to the end of the backward, and at most two blocks at once
    (the one computing, the next prefetched). Gradients: the root's are unsharded until the end of the
    backward, plus one block's as it is computed and the flat reduce-scatter input of the block before,
    still in flight (measured: 2 gloo ranks, 4 x 512-wide blocks, peak RSS within 7% of this); they
    are reduce-scattered every micro-batch (train.py), so accumulation keeps only the shards. bf16 on CUDA under bf16 autocast
    (the mixed-precision policy), else fp32."""
    counts = count_parameters(config)
    root = counts["embedding"] + config.d_model  # + the final norm (biases aside)
    block = (n - root) / config.n_layer
    gathered = (2.0 if gather_bf16 else 4.0) * (root + 2 * block)
    unsharded_grads = 4.0 * (root + 2 * block) if trainable_fraction >= 1.0 else 0.0
    sharded_grads = 4.0 * n * trainable_fraction / world_size if grad_accum > 1 else 0.0
    return {"gathered": gathered, "grads_in_backward": unsharded_grads + sharded_grads, "gather_bf16": gather_bf16}


def inference_memory(config: ModelConfig, batch: int = 1, context: Optional[int] = None,
                     dtype: str = "fp32", group_size: int = 32) -> dict:
    """Memory to generate with a KV cache, in MB: weights + KV cache + prefill logits + one block's scratch.

    dtype: fp32 | bf16 | fp16 for the weights and cache; int8 (one fp32 scale per output row) or
    int4 (one fp32 scale per `group_size` weights) for weight-only quantized block linears, with
    embeddings, norms and the activations/cache left in fp32. The logits are the prefill's (B, T, V).
    """
    config, note = resolve_vocab(config)
    if dtype not in DTYPE_BYTES:
        raise SLMError(f"dtype={dtype!r} is invalid: use one of {', '.join(DTYPE_BYTES)}")
    T = min(context or config.context_length, config.context_length)
    total_params = count_parameters(config)["total"]
    compute = DTYPE_BYTES[dtype] if dtype in ("fp32", "bf16", "fp16") else 4
    if dtype in ("int8", "int4"):
        block_linear = linear_weight_count(config) - config.vocab_size * config.d_model
        if dtype == "int8":
            kv = config.n_kv_head * config.head_dim
            rows = config.n_layer * (2 * config.d_model + 2 * kv + (2 if config.mlp == "swiglu" else 1)
                                     * config.d_ff + config.d_model)
            scales = 4 * rows
        else:
            scales = 4 * block_linear / group_size
        weights = block_linear * DTYPE_BYTES[dtype] + scales + (total_params - block_linear) * 4
    else:
        weights = total_params * DTYPE_BYTES[dtype]
    kv_cache = 2 * config.n_layer * batch * T * config.n_kv_head * config.head_dim * compute  # keys, values
    logits = batch * T * config.vocab_size * compute
    # The prefill's widest moment in one block: the residual and norm output plus q, k, v, output
    # (GQA's repeated k/v) or the MLP's hidden tensors, whichever is larger.
    d, f = config.d_model, config.d_ff
    scratch = batch * T * compute * (2 * d + max(6 * d, (3 if config.mlp == "swiglu" else 2) * f))
    total = weights + kv_cache + logits + scratch
    return {"weights_mb": weights / MB, "kv_cache_mb": kv_cache / MB, "logits_mb": logits / MB,
            "activations_mb": scratch / MB, "total_mb": total / MB, "batch": batch, "context": T,
            "dtype": dtype, "note": note}


def fits(mem_mb: float, available_mb: float, headroom: float = 0.9) -> bool:
    """Whether an estimate fits in the memory available, leaving 10% for the framework and the allocator."""
    return mem_mb <= headroom * available_mb


# ---- time ------------------------------------------------------------------------------------

def time_matmul(device: str, dtype: str, shape: tuple, seconds: float) -> float:
    """FLOP/s of repeated (M,K)@(K,N) multiplies on `device`, measured for about `seconds`."""
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    M, K, N = shape
    cuda = str(device).startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    a = torch.randn(M, K, device=device, dtype=torch_dtype)
    b = torch.randn(K, N, device=device, dtype=torch_dtype)
    a @ b  # the first call pays for kernel selection and thread start-up
    sync()
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(8 if cuda else 1):  # GPU: queue a few before waiting, so launches overlap
            a @ b
            count += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2.0 * M * K * N * count / elapsed


def measured_matmul_flops(device: str = "cpu", dtype: str = "fp32", shape: tuple = (1024, 1024, 1024),
                          seconds: float = 0.2, isolate: Optional[bool] = None) -> float:
    """`time_matmul`, cached per (device, dtype, shape) for the life of the process.

    isolate (default: on a GPU) measures in a short-lived subprocess, so the caller (the
    Studio's server) does not keep a CUDA context, and its memory, on the GPU training needs.
    """
    key = (str(device), dtype, tuple(shape))
    if key not in _FLOPS_CACHE:
        if isolate or (isolate is None and str(device).startswith("cuda")):
            _FLOPS_CACHE[key] = _time_matmul_in_subprocess(str(device), dtype, shape, seconds)
        else:
            _FLOPS_CACHE[key] = time_matmul(device, dtype, shape, seconds)
    return _FLOPS_CACHE[key]


def _time_matmul_in_subprocess(device: str, dtype: str, shape: tuple, seconds: float) -> float:
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from slm_core.models.estimate import time_matmul; "
            "print(time_matmul(sys.argv[1], sys.argv[2], tuple(map(int, sys.argv[3:6])), float(sys.argv[6])))")
    root = str(Path(__file__).resolve().parent.parent)  # so the child imports this same slm_core
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code, str(device), dtype, *map(str, shape), str(seconds)],
                          capture_output=True, text=True, timeout=120, env=env)
    if done.returncode != 0:
        raise SLMError(f"the matmul benchmark on {device} failed ({done.stderr.strip()[-300:]}); "
                       f"estimate with device='cpu'")
    return float(done.stdout.strip().splitlines()[-1])


# The part of its matmuls' rate a whole training step reaches (norms, loss, AdamW, Python); CUDA's is a typical figure.
STEP_UTILIZATION = {("cpu", False): 0.6, ("cpu", True): 0.4, ("cuda", False): 0.4, ("cuda", True): 0.4}


def estimate_step_time(config: ModelConfig, batch_size: int, precision: str = "fp32", device: str = "cpu",
                       grad_accum: int = 1, grad_checkpointing: bool = False, context: Optional[int] = None,
                       utilization: Optional[float] = None) -> dict:
    """Seconds per optimizer step: the step's FLOPs over a matmul rate measured on `device`.

    The benchmark multiplies matrices shaped like the model's MLP, (min(B*T, 2048), d) @ (d, d_ff),
    in the compute dtype, so small models are judged at their own (less efficient) sizes.
    Checkpointing re-runs the forward: 8 instead of 6 FLOPs per weight.
    """
    config, note = resolve_vocab(config)
    device = str(device)
    amp = uses_autocast(precision, device)
    dtype = ("fp16" if precision == "fp16" else "bf16") if amp else "fp32"
    T = min(context or config.context_length, config.context_length)
    flops = flops_per_token(config, T)
    per_token = flops["train"] * (4 / 3 if grad_checkpointing else 1.0)
    tokens = batch_size * T * grad_accum
    shape = (min(batch_size * T, 2048), config.d_model, config.d_ff)
    rate = measured_matmul_flops(device, dtype, shape)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    achieved = rate * (utilization if utilization is not None else STEP_UTILIZATION[kind, amp])
    step_s = per_token * tokens / achieved
    return {"step_s": step_s, "tokens_per_s": tokens / step_s, "flops_per_step": per_token * tokens,
            "matmul_flops_per_s": rate, "achieved_flops_per_s": achieved, "device": device, "dtype": dtype,
            "note": note}


# ---- everything at once ----------------------------------------------------------------------

def describe(config: ModelConfig, batch_size: int = 8, precision: str = "auto", grad_checkpointing: bool = False,
             mode: str = "pretrain", lora: Optional[LoRAConfig] = None, teacher: Optional[ModelConfig] = None,
             device: Optional[str] = None, grad_accum: int = 1, timing: bool = False, strategy: str = "ddp",
             nproc: int = 1) -> dict:
    """All estimates for one model and training setup, for `slm presets` and the Studio's Model tab.

    nproc processes on this machine (one per GPU; on CPU they share its RAM) with `strategy`:
    "training" is one process's peak; on CPU the fit check counts all nproc of them.

    {"params", "training", "inference", "inference_bf16", "flops_per_token", "compute_optimal_tokens",
     "available_mb", "fits_training", "fits_inference", "step" (only with timing=True: it runs a
     short benchmark), "notes"}. mode 'lora' needs `lora` (its rank and targets set what trains);
    mode 'distill' takes the teacher's ModelConfig when known.
    """
    device = str(device or default_device())
    params = count_parameters(config)
    fraction = 1.0
    if mode == "lora":
        added = lora_parameters(config, lora or LoRAConfig())
        params = {**params, "lora": added, "trainable": added}
        fraction = added / params["total"]
    else:
        params = {**params, "trainable": params["total"]}
    training = training_memory(config, batch_size, precision, grad_checkpointing, fraction, grad_accum=grad_accum,
                               device=device, teacher=teacher if mode == "distill" else None,
                               strategy=strategy, world_size=max(1, int(nproc)))
    slack = 1.0 if device.startswith("cuda") else CPU_ALLOCATOR_SLACK * max(1, int(nproc))
    if device.startswith("cuda"):
        gpus = system.gpu_info()
        available = gpus[0]["free_mb"] if gpus else None
    else:
        available = system.system_memory()["available_mb"]
    info = {
        "params": params, "training": training,
        "inference": inference_memory(config, dtype="fp32"),
        "inference_bf16": inference_memory(config, dtype="bf16"),
        "flops_per_token": flops_per_token(config),
        "compute_optimal_tokens": compute_optimal_tokens(params["total"]),
        "available_mb": available,
        "fits_training": None if available is None else fits(training["total_mb"] * slack, available),
        "notes": [n for n in (params.get("note"),) if n],
    }
    if not device.startswith("cuda"):
        info["notes"].append("On CPU the process's memory can run 15-60% above the training estimate "
                             "(the C allocator keeps freed memory); 'fits' allows for that.")
    info["notes"] += strategy_notes(training, nproc, device)
    info["fits_inference"] = None if available is None else fits(info["inference"]["total_mb"], available)
    if timing:
        info["step"] = estimate_step_time(config, batch_size, precision, device, grad_accum, grad_checkpointing)
    return info


def strategy_notes(training: dict, nproc: int, device: str) -> list[str]:
    """One line on what the process count and strategy do to the figure (none for one process)."""
    if nproc <= 1:
        return []
    each = "each GPU" if device.startswith("cuda") else f"each of the {nproc} processes (they share this RAM)"
    if training.get("strategy") == "fsdp":
        return [f"FSDP over {nproc} processes: weights, gradients and optimizer state are split {nproc} ways; "
                f"{each} also holds the gathered embeddings, head and two blocks "
                f"({training['gathered_mb']:.0f} MB). The training figure is per process."]
    return [f"DDP over {nproc} processes: {each} holds a full copy of the weights, gradients and optimizer "
            f"state; the training figure is per process. Use train.strategy=fsdp to split them."]
