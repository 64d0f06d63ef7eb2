"""The real-model memory estimate (slm_core.models.memory) against what a process really holds.

A random checkpoint shaped like Llama-3.2-1B with fewer layers (bench_load's writer: bf16, tied, llama3
RoPE; default 4 layers, 0.5B parameters) is measured in a fresh process per case: peak RSS (VmHWM)
above the process's baseline (torch and slm_core imported) next to the estimate's figure for it.

  load      load_model + one forward (every page touched)     vs load_bytes (the weights as held)
  chat      the chat engine (4 slots) + 32 generated tokens   vs the Chat row
  lora      one LoRA step (r=8, attention; batch 1 x 256)     vs the LoRA row
  qlora-int8, qlora-int4   the same over a base quantized as slm_core.models.qlora does   vs the QLoRA rows
  finetune  one full fine-tuning step (AdamW, bf16 weights)   vs the Full fine-tune row

The estimates are tensor peaks; on CPU glibc keeps freed blocks, so RSS may run above them (the page's
'fits' allows CPU_ALLOCATOR_SLACK for that).

    python benchmarks/bench_model_memory.py [--layers 4] [--dtype bf16|fp32] [--cases load,chat,lora,finetune]

Figures that set constants:
- CPU_ALLOCATOR_SLACK (slm_core/models/estimate.py): peak RSS over the tensor peak, 1.15-1.6 on the tiny
  presets (fp32 1.15-1.4, bf16 1.2-1.4, gradient checkpointing 1.6); the fit check takes the top.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench_load import write_checkpoint  # noqa: E402

BATCH, CONTEXT = 1, 256

WORKER = r"""
import json, sys
import torch
from slm_core.models.load import load_model
case, folder, batch, context = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
import psutil, peft  # imported before the baseline: their own footprint is not the model's
base = psutil.Process().memory_info().rss / 2**20
loaded = load_model(folder)
model = loaded.model
vocab = model.config.vocab_size
if case == "load":
    with torch.no_grad():
        model(torch.arange(8)[None])
elif case == "chat":
    from slm_core.infer.engine import Engine
    from slm_core.infer.sampling import SamplingParams
    engine = Engine(model, loaded.tokenizer, slots=4)
    request = engine.submit(list(range(100, 164)), SamplingParams(max_new_tokens=32, temperature=0.0))
    tokens = [t for t in request]
    engine.close()
else:
    if case.startswith("qlora"):  # as modes.py builds it: quantize the frozen base, then add the adapters
        from slm_core.models.qlora import quantize_base
        model = quantize_base(model, case.split("-")[1], "cpu")
    if "lora" in case:
        from slm_core.config import LoRAConfig
        from slm_core.models.lora import apply_lora
        model = apply_lora(model, LoRAConfig(r=8, targets="attention", dropout=0.0))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    x = torch.randint(0, vocab, (batch, context))
    for _ in range(2):  # the second step has AdamW's state: the steady state the estimate describes
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, vocab), x.view(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
print(json.dumps({"peak_mb": hwm() - base}))
"""


def as_fp32(folder: Path) -> Path:
    """A copy of the checkpoint with fp32 weights (written once, beside it)."""
    import torch
    from safetensors.torch import load_file, save_file

    target = folder.with_name(folder.name + "-fp32")
    if not (target / "model.safetensors").exists():
        target.mkdir(parents=True, exist_ok=True)
        config = json.loads((folder / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "torch_dtype": "float32"}))
        state = {k: v.to(torch.float32) for k, v in load_file(str(folder / "model.safetensors")).items()}
        save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def measure(case: str, folder: Path) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", WORKER, case, str(folder), str(BATCH), str(CONTEXT)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def step_time_vs_estimate(presets=("tiny-gpt", "tiny-llama"), batches=(1, 4, 16), context=64, steps=4) -> None:
    """The step-time estimate beside a measured fp32 step (best of `steps` after a warm-up) on this CPU."""
    import dataclasses
    import time

    import torch
    import torch.nn.functional as F

    from slm_core.config import load_model_preset
    from slm_core.models.estimate import estimate_step_time
    from slm_core.models.model import Transformer

    print(f"{'preset':<12}{'batch':>6}{'estimate s':>12}{'measured s':>12}{'est/measured':>14}")
    for preset in presets:
        config = dataclasses.replace(load_model_preset(preset), context_length=context)
        for batch in batches:
            model = Transformer(config).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            x = torch.randint(0, config.vocab_size, (batch, context))
            times = []
            for _ in range(steps + 1):
                start = time.perf_counter()
                F.cross_entropy(model(x).view(-1, config.vocab_size), x.view(-1)).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - start)
            real = min(times[1:])
            est = estimate_step_time(config, batch, "fp32", device="cpu")["step_s"]
            print(f"{preset:<12}{batch:>6}{est:>12.3f}{real:>12.3f}{est / real:>13.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--folder", default=None)
    parser.add_argument("--cases", default="load,chat,lora,finetune")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"],
                        help="fp32: the same weights stored as fp32 (training in bf16 is slow on CPUs without it)")
    parser.add_argument("--step-time", action="store_true", help="the step-time estimate vs a real step instead")
    args = parser.parse_args()
    if args.step_time:
        step_time_vs_estimate()
        return
    folder = Path(args.folder or f"/tmp/slm-bench-llama32-{args.layers}l")
    params = write_checkpoint(folder, args.layers)
    if args.dtype == "fp32":
        folder = as_fp32(folder)
    from slm_core.models.memory import MB, estimate, load_bytes

    est = estimate(str(folder), device="cpu", batch_size=BATCH, context=CONTEXT)
    figures = {"load": load_bytes(folder) / MB, "chat": est["chat"]["mb"],
               **{row["what"]: row["mb"] for row in est["training"]}}
    print(f"checkpoint: {params / 1e9:.2f}B parameters ({args.layers} layers of Llama-3.2-1B), {args.dtype}, in {folder}; "
          f"batch {BATCH} x context {CONTEXT}; chat in {est['chat']['dtype']}")
    print(f"{'case':<10}{'estimate MiB':>14}{'measured MiB':>14}{'measured/est':>14}")
    stored = load_bytes(folder) / MB
    for case in args.cases.split(","):
        measured = measure(case, folder)
        line = f"{case:<10}{figures[case]:>14.0f}{measured:>14.0f}{measured / figures[case]:>13.2f}x"
        if case.startswith("qlora"):  # the checkpoint's pages stay mapped after quantizing (file-backed)
            line += f"   without the mapped checkpoint ({stored:.0f}): {(measured - stored) / figures[case]:.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
