"""DDP scaling on CPU: training tokens/s of 2 processes (`slm train --nproc 2`, gloo, one thread each) against
1 process on one thread, at the same global batch, and against 1 process using every core.

Scaling efficiency = tokens/s of N processes / (N x tokens/s of one single-threaded process): 1.0 means N
processes do N times the work. The last column answers the practical question: does `--nproc 2` beat one
process with all the threads on this machine? Runs alternate (1 thread, all threads, 2 processes, ...) so a
change in machine load hits each alike; each figure is the median step after the first five.

    python benchmarks/bench_ddp_scaling.py [--preset quickstart-cpu] [--steps 40] [--global-batch 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 5


def run(preset: str, steps: int, batch: int, nproc: int, threads: int, work: Path, name: str) -> float:
    """Median training tokens/s (global: every rank's tokens) of one run."""
    runs = work / "runs"
    sets = [f"train.max_steps={steps}", f"train.batch_size={batch}", "train.grad_accum=1",
            "train.eval_interval=100000", "train.ckpt_interval=100000", "train.sample_prompts=[]"]
    cmd = [sys.executable, "-m", "slm_core", "train", "--preset", preset, "--name", name, "--quiet",
           "--runs-dir", str(runs), "--nproc", str(nproc)] + [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "SLM_CACHE_DIR": str(work / "cache"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["tokens_per_sec"] for r in rows if r.get("kind") == "train" and r["step"] > WARMUP_STEPS]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quickstart-cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--global-batch", type=int, default=16, help="sequences per step over all processes")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    if args.global_batch % args.nproc:
        raise SystemExit(f"--global-batch {args.global_batch} does not split over {args.nproc} processes")
    cases = {"1 process, 1 thread": (1, 1, args.global_batch),
             f"1 process, {cores} threads": (1, cores, args.global_batch),
             f"{args.nproc} processes (DDP), {max(1, cores // args.nproc)} thread each":
                 (args.nproc, max(1, cores // args.nproc), args.global_batch // args.nproc)}
    results: dict = {label: [] for label in cases}
    with tempfile.TemporaryDirectory(prefix="ddp-") as tmp:
        for round_ in range(args.rounds):
            for i, (label, (nproc, threads, batch)) in enumerate(cases.items()):
                rate = run(args.preset, args.steps, batch, nproc, threads, Path(tmp), f"r{round_}-{i}")
                results[label].append(rate)
                print(f"round {round_ + 1}: {label}: {rate:.0f} tokens/s (load {os.getloadavg()[0]:.1f})", flush=True)
    single, all_threads, ddp = (statistics.median(v) for v in results.values())
    print(f"\n{args.preset}, global batch {args.global_batch}, {args.steps} steps, {cores} cores, median of "
          f"{args.rounds} rounds:")
    for label, rates in results.items():
        print(f"  {label:<40}{statistics.median(rates):>10.0f} tokens/s")
    print(f"  DDP scaling efficiency ({args.nproc} processes vs {args.nproc} x one): "
          f"{ddp / (args.nproc * single):.2f}")
    print(f"  {args.nproc} processes against one process on all {cores} cores: {ddp / all_threads:.2f}x")


if __name__ == "__main__":
    main()
