"""slm_core against Hugging Face transformers on the same model shape, same machine, same process.

Prints training tokens/s (forward + backward + AdamW; the two models' steps alternated, median step)
and batch-1 generation tokens/s for both, and their ratio. Targets: training >= 1.3x, generation >= 2x.

    python benchmarks/bench_engine.py [--family llama|gpt2] [--steps 8] [--precision fp32|bf16] [--compile]

--compile trains both models through torch.compile (each compiles once, untimed): compiled against compiled.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from slm_core.config import ModelConfig
from slm_core.infer.generate import generate_tokens
from slm_core.models.model import Transformer
from slm_core.system import cpu_has_native_bf16


def shapes(family: str) -> ModelConfig:
    # The ~15.7M Llama-shaped model ENVIRONMENT.md measured, and its GPT-2 twin.
    if family == "llama":
        return ModelConfig(family="llama", n_layer=6, n_head=6, n_kv_head=2, d_model=384, d_ff=1024,
                           context_length=256, vocab_size=8192)
    return ModelConfig(family="gpt2", n_layer=6, n_head=6, d_model=384, context_length=256, vocab_size=8192)


def hf_model(config: ModelConfig) -> torch.nn.Module:
    import transformers

    if config.family == "llama":
        hf_config = transformers.LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.d_ff,
            num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
            num_key_value_heads=config.n_kv_head, max_position_embeddings=config.context_length,
            rope_theta=config.rope_theta, tie_word_embeddings=config.tie_embeddings, attn_implementation="sdpa")
        return transformers.LlamaForCausalLM(hf_config)
    hf_config = transformers.GPT2Config(vocab_size=config.vocab_size, n_embd=config.d_model, n_layer=config.n_layer,
                                        n_head=config.n_head, n_positions=config.context_length,
                                        attn_implementation="sdpa")
    return transformers.GPT2LMHeadModel(hf_config)


def logits_of(model, x):
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def train_step(model, config, batch, amp, compiled=False):
    """One training step (forward, loss, backward, AdamW) of `model` on a fixed batch, as a function."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, config.vocab_size, (batch, config.context_length))
    model.train()
    forward = torch.compile(model) if compiled else model

    def step():
        with amp():
            logits = logits_of(forward, x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_tokens_per_sec(models: dict, config, batch, steps, amp, compiled=False) -> dict:
    """Training tokens/s of each model, their steps alternated (A, B, A, B, ...) so a machine whose load
    changes during the run slows both alike; each figure is from the median step (wall time)."""
    fns = {name: train_step(model, config, batch, amp, compiled) for name, model in models.items()}
    for fn in fns.values():
        fn()  # warm-up (and the compile)
        fn()
    times: dict = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: batch * (config.context_length - 1) / statistics.median(t) for name, t in times.items()}


@torch.inference_mode()
def ours_generate_tokens_per_sec(model, prompt, n_new) -> float:
    model.eval()
    list(generate_tokens(model, prompt, 8, temperature=0, seed=0))  # warm-up
    started = time.perf_counter()
    count = sum(1 for _ in generate_tokens(model, prompt, n_new, temperature=0, seed=0))
    return count / (time.perf_counter() - started)


@torch.inference_mode()
def hf_generate_tokens_per_sec(model, prompt, n_new) -> float:
    model.eval()
    ids = torch.tensor([prompt])
    model.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    started = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="llama", choices=["llama", "gpt2"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="train both through torch.compile")
    parser.add_argument("--no-generate", action="store_true", help="training rows only")
    args = parser.parse_args()
    if args.precision == "bf16" and not cpu_has_native_bf16():
        print(f"this CPU has no native bf16 (torch reports {torch.backends.cpu.get_cpu_capability()}): bf16 "
              f"matrix multiplies are emulated here (~100x slower than fp32), so a bf16 row would measure the "
              f"emulation, not either implementation; run it on a CPU with AVX-512 BF16 or AMX")
        return
    torch.manual_seed(0)
    config = shapes(args.family)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" else contextlib.nullcontext
    ours, theirs = Transformer(config), hf_model(config)
    n_ours, n_hf = ours.num_parameters(), sum(p.numel() for p in theirs.parameters())
    print(f"{args.family} shape: {n_ours / 1e6:.1f}M params (transformers: {n_hf / 1e6:.1f}M), "
          f"{torch.get_num_threads()} threads, {args.precision}{', compiled' if args.compile else ''}")
    rates = train_tokens_per_sec({"ours": ours, "hf": theirs}, config, args.batch, args.steps, amp, args.compile)
    train_ours, train_hf = rates["ours"], rates["hf"]
    print(f"{'':<28}{'slm_core':>12}{'transformers':>14}{'ratio':>8}")
    print(f"{'train tokens/s':<28}{train_ours:>12.0f}{train_hf:>14.0f}{train_ours / train_hf:>7.2f}x")
    if args.no_generate:
        return
    prompt = torch.randint(0, config.vocab_size, (16,)).tolist()
    gen_ours = ours_generate_tokens_per_sec(ours, prompt, args.new_tokens)
    gen_hf = hf_generate_tokens_per_sec(theirs, prompt, args.new_tokens)
    print(f"{'generate tokens/s (batch 1)':<28}{gen_ours:>12.1f}{gen_hf:>14.1f}{gen_ours / gen_hf:>7.2f}x")


if __name__ == "__main__":
    main()
