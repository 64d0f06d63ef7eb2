"""GPT-2 small (124M) training speed on one GPU: our loop against nanoGPT's train.py (or transformers).

Each side trains the same shape (12 layers, 768 wide, context 1024) in bf16 with SDPA attention,
fused AdamW and torch.compile on synthetic tokens, and reports tokens/s (median over the steps after
warm-up), MFU against the GPU's dense bf16 peak (slm_core.train.tracking.PEAK_FLOPS), peak allocated
memory and the time from launching the process to the end of the first optimizer step (imports,
compilation and the first step: what a person waits before the run moves).

    python benchmarks/bench_gpu.py ours [--steps 60]
    python benchmarks/bench_gpu.py nanogpt --nanogpt PATH_TO_CHECKOUT
    python benchmarks/bench_gpu.py transformers

Each prints one JSON line and appends it to --out/gpu_check.jsonl. Our side runs `slm train`, so its
per-step rows (tokens_per_sec, mfu) are also in its run's metrics.jsonl. benchmarks/gpu_check.sh runs
the sides one after another.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)
ITER_LINE = re.compile(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms")


def flops_per_token(vocab: int) -> float:
    from slm_core.config import ModelConfig
    from slm_core.models.estimate import flops_per_token as ours

    config = ModelConfig(family="gpt2", n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"], d_model=SHAPE["n_embd"],
                         context_length=SHAPE["block_size"], vocab_size=vocab)
    return ours(config)["train"]


def peak_bf16() -> float | None:
    import torch

    from slm_core.train.tracking import peak_flops

    return peak_flops("cuda:0", amp=True) if torch.cuda.is_available() else None  # no GPU: no MFU


def summarise(side: str, step_tokens: int, step_seconds: list[float], first_step_s: float, peak_mb, vocab: int,
              warmup: int) -> dict:
    steady = step_seconds[warmup:] or step_seconds
    tps = step_tokens / statistics.median(steady)
    peak = peak_bf16()
    return {"side": side, "tokens_per_sec": round(tps), "mfu": round(tps * flops_per_token(vocab) / peak, 4)
            if peak else None, "peak_mem_mb": round(peak_mb) if peak_mb else None,
            "time_to_first_step_s": round(first_step_s, 1), "steps": len(step_seconds), "step_tokens": step_tokens}


def synthetic_text(path: Path, n_chars: int = 3_000_000) -> None:
    """Random words: the loop's speed does not depend on what the text says."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    text = " ".join(rng.choice(words) for _ in range(n_chars // 6))
    path.write_text(text)


def run_ours(args, work: Path) -> dict:
    data = work / "text.txt"
    synthetic_text(data)
    runs_dir, name = work / "runs", "gpu-check"
    sets = [f"data.source={data}", "tokenizer.kind=char", "model.vocab_size=50257", f"train.max_steps={args.steps}",
            f"train.batch_size={args.batch}", f"train.grad_accum={args.accum}", "train.precision=bf16",
            "train.compile=true", "train.eval_interval=100000", "train.eval_batches=1", "train.ckpt_interval=100000",
            "train.sample_prompts=[]", "train.device=cuda", *args.sets]
    cmd = [sys.executable, "-m", "slm_core", "train", "--preset", "gpt2-124m-gpu", "--name", name, "--quiet",
           "--runs-dir", str(runs_dir)] + [x for s in sets for x in ("--set", s)]
    metrics = runs_dir / name / "metrics.jsonl"
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    first = None
    while proc.poll() is None:
        if first is None and metrics.exists() and '"kind": "train"' in metrics.read_text():
            first = time.perf_counter() - started
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"our run failed (exit {proc.returncode}); see {runs_dir / name}")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in rows if r.get("kind") == "train"]
    status = json.loads((runs_dir / name / "status.json").read_text())
    out = summarise("slm_core", steps[0]["tokens"], [r["step_ms"] / 1000 for r in steps],
                    first or 0.0, status.get("gpu_peak_mb"), 50257, args.warmup)
    mfus = [r["mfu"] for r in steps[args.warmup:] if "mfu" in r]
    out["mfu_logged"] = round(statistics.median(mfus), 4) if mfus else None  # what the run's metrics.jsonl says
    shutil.copy(metrics, args.out / "slm_core_metrics.jsonl")  # per-step tokens_per_sec and mfu, kept
    out["metrics"] = str(args.out / "slm_core_metrics.jsonl")
    return out


NANOGPT_WRAPPER = """
import runpy, sys, torch
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
print("PEAK_MB", torch.cuda.max_memory_allocated() / 2**20, flush=True)
"""


def run_nanogpt(args, work: Path) -> dict:
    import numpy as np

    copy = work / "nanoGPT"
    shutil.copytree(args.nanogpt, copy, ignore=shutil.ignore_patterns(".git", "out*", "*.bin", "assets"))
    fake = copy / "data" / "synthetic"
    fake.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 20_000_000), ("val", 200_000)):  # no meta.pkl: nanoGPT uses its 50304 vocab
        rng.integers(0, 50257, n, dtype=np.uint16).tofile(fake / f"{split}.bin")
    (copy / "bench_wrapper.py").write_text(NANOGPT_WRAPPER)
    cmd = [sys.executable, "-u", "bench_wrapper.py", "--dataset=synthetic", f"--batch_size={args.batch}",
           f"--gradient_accumulation_steps={args.accum}", f"--max_iters={args.steps}", "--eval_interval=100000",
           "--eval_iters=1", "--log_interval=1", "--compile=True", "--dtype=bfloat16",
           "--always_save_checkpoint=False", f"--out_dir={work / 'nanogpt-out'}", "--dropout=0.0"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=copy, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    steps, first, peak = [], None, None
    for line in proc.stdout:
        if match := ITER_LINE.search(line):
            first = first or time.perf_counter() - started
            steps.append(float(match.group(2)) / 1000)
        elif line.startswith("PEAK_MB"):
            peak = float(line.split()[1])
    if proc.wait() != 0:
        raise SystemExit(f"nanoGPT's train.py failed (exit {proc.returncode})")
    # nanoGPT's own `time` of iteration 0 includes compilation; its step time is the loop's wall time per iter.
    return summarise("nanoGPT", args.batch * args.accum * SHAPE["block_size"], steps[1:], first or 0.0, peak,
                     50304, args.warmup)


def run_transformers(args) -> dict:
    """transformers' GPT2LMHeadModel (SDPA) in a plain loop with the same settings as ours."""
    started = time.perf_counter()
    import torch
    import torch.nn.functional as F
    import transformers

    config = transformers.GPT2Config(n_positions=SHAPE["block_size"], attn_implementation="sdpa")
    model = transformers.GPT2LMHeadModel(config).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    compiled = torch.compile(model)
    steps, first = [], None
    for _ in range(args.steps):
        t0 = time.perf_counter()
        for _ in range(args.accum):
            x = torch.randint(0, 50257, (args.batch, SHAPE["block_size"] + 1), device="cuda")
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = compiled(x[:, :-1]).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()) / args.accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # one sync per step, as our loop does
        first = first or time.perf_counter() - started
        steps.append(time.perf_counter() - t0)
    return summarise("transformers", args.batch * args.accum * SHAPE["block_size"], steps[1:], first,
                     torch.cuda.max_memory_allocated() / 2**20, 50257, args.warmup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=["ours", "nanogpt", "transformers"])
    parser.add_argument("--nanogpt", type=Path, help="nanoGPT checkout (for side nanogpt)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the median")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra override for our run")
    args = parser.parse_args()
    import tempfile

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        if args.side == "ours":
            result = run_ours(args, Path(tmp))
        elif args.side == "nanogpt":
            if not args.nanogpt:
                parser.error("side nanogpt needs --nanogpt PATH")
            result = run_nanogpt(args, Path(tmp))
        else:
            result = run_transformers(args)
    print(json.dumps(result), flush=True)
    with open(args.out / "gpu_check.jsonl", "a") as handle:
        handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
