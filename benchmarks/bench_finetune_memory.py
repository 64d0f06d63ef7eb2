"""Fine-tuning memory on one base: full fine-tune vs LoRA vs QLoRA (int8 base) vs QLoRA (int4 base).

The base is a random checkpoint shaped like Llama-3.2-1B (bf16 as published, tied embeddings, GQA 32:8;
written once by bench_load.write_checkpoint), optionally with fewer of its 16 layers. Each mode runs in
its own process, built the way `slm train` builds it (checkpoint.load_model as modes.py calls it, then
qlora.quantize_base / lora.apply_lora, optim.build_optimizer), and takes a few optimizer steps on random
tokens. Reported per mode:

  weights MB   bytes the model's tensors hold (base + adapters; each storage once)
  optim MB     the optimizer's state tensors after a step (AdamW: two per trainable weight)
  RSS MB       resident memory after the steps, above the process baseline (torch and the engine imported)
  peak MB      VmHWM above that baseline: includes loading the bf16 checkpoint before it is quantized
  step s       seconds per optimizer step (mean after the first), batch x context tokens

Float weights are fp32 by default (--dtype): on this CPU (torch 2.13) a bf16 matmul with the vocabulary as
the inner dimension, i.e. the input gradient of a 128k-row lm_head, took 156 s against 1.1 s in fp32, so
bf16 full fine-tuning and LoRA steps ran ~150-190 s for 16 tokens here.

    python benchmarks/bench_finetune_memory.py [--layers 16] [--context 128] [--steps 3] [--modes full,lora,...]

Figures that set constants:
- _half_weights_are_slow (slm_core/train/modes.py): a bf16 base trains in fp32 on a CPU without bf16 units,
  where its backward matmuls ran 10-100x slower than fp32 (the lm_head gradient above: 156 s against 1.1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MODES = ("full", "lora", "qlora-int8", "qlora-int4")

WORKER = r"""
import json, sys, time
import psutil, torch
from slm_core.models.load import load_model
from slm_core.config import LoRAConfig, TrainConfig
from slm_core.models.lora import apply_lora
from slm_core.train.optim import build_optimizer
from slm_core.models.qlora import base_weight_bytes, quantize_base

mode, folder, context, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[sys.argv[6]]
torch.set_num_threads(threads)
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
baseline = psutil.Process().memory_info().rss / 2**20
model = load_model(folder, dtype=dtype).model
if mode.startswith("qlora"):
    quantize_base(model, mode.split("-")[1])
if mode != "full":
    model = apply_lora(model, LoRAConfig(r=16, alpha=32, dropout=0.0, targets="all"))
model.train()
optimizer = build_optimizer(model, TrainConfig(lr=1e-4, weight_decay=0.0), torch.device("cpu"))
vocab = model.config.vocab_size if hasattr(model.config, "vocab_size") else model.get_base_model().config.vocab_size
generator = torch.Generator().manual_seed(0)
times = []
for step in range(steps):
    x = torch.randint(0, vocab, (1, context + 1), generator=generator)
    start = time.perf_counter()
    logits = model(x[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
adapters = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n)
optim_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                  if torch.is_tensor(t) and t.dim() > 0)
print(json.dumps({"mode": mode, "trainable": trainable, "weights_mb": (base_weight_bytes(model) + adapters) / 2**20,
                  "optim_mb": optim_bytes / 2**20, "rss_mb": psutil.Process().memory_info().rss / 2**20 - baseline,
                  "peak_mb": hwm() - baseline, "step_s": sum(times[1:]) / max(len(times) - 1, 1)}))
"""


def run(mode: str, folder: Path, context: int, steps: int, threads: int, dtype: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", WORKER, mode, str(folder), str(context), str(steps), str(threads), dtype],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"mode": mode, "error": (out.stderr.strip().splitlines() or ["killed"])[-1][:120]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_load import write_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16, help="of Llama-3.2-1B's 16 (fewer: a smaller base)")
    parser.add_argument("--folder", default=None, help="default: /tmp/slm-bench-llama32-1b-<layers>L")
    parser.add_argument("--context", type=int, default=128, help="tokens per step (batch 1)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                        help="the float weights (base and full fine-tune); bf16 on CPU hits a very slow matmul, see below")
    args = parser.parse_args()
    folder = Path(args.folder or f"/tmp/slm-bench-llama32-1b-{args.layers}L")
    params = write_checkpoint(folder, args.layers)
    print(f"base: Llama-3.2-1B's shape with {args.layers} of 16 layers, {params / 1e9:.2f}B parameters, "
          f"{params * 2 / 2**20:.0f} MiB bf16 ({folder}); batch 1 x {args.context} tokens, {args.threads} threads, {args.dtype} float weights")
    rows = []
    for mode in args.modes.split(","):
        rows.append(run(mode, folder, args.context, args.steps, args.threads, args.dtype))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'mode':<12}{'trainable':>12}{'weights MB':>12}{'optim MB':>10}{'RSS MB':>9}{'peak MB':>9}{'step s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['mode']:<12}  failed: {r['error']}")
            continue
        print(f"{r['mode']:<12}{r['trainable']:>12,}{r['weights_mb']:>12.0f}{r['optim_mb']:>10.0f}{r['rss_mb']:>9.0f}"
              f"{r['peak_mb']:>9.0f}{r['step_s']:>8.2f}")


if __name__ == "__main__":
    main()
