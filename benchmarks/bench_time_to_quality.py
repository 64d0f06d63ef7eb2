"""Wall time to a validation loss: our shakespeare-char-cpu recipe against nanoGPT's own CPU recipe.

Both train a character model on the same tiny Shakespeare text on this machine, in alternating
runs (ours, nanoGPT, ours, nanoGPT, ...) so that a change in machine load hits both alike. A run's
time is from launching its process to the moment its log shows a validation loss at or below the
target (the process is then ended); the ratio ours / nanoGPT is per round and as a median. Where
nanoGPT's recipe ends without reaching the target (its 2,000 iterations stop near 1.88), its whole
run is the baseline: the wall time of nanoGPT's recipe, reaching its best validation loss, printed
beside it.

    python benchmarks/bench_time_to_quality.py --nanogpt PATH_TO_NANOGPT_CHECKOUT \
        --data tinyshakespeare.txt [--rounds 2] [--target 1.88] [--set train.lr=2e-3 ...]

nanoGPT runs from a temporary copy of the checkout (its data/shakespeare_char/prepare.py on the
given text, untimed); its command is the CPU line of nanoGPT's README. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NANOGPT_CPU = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
               "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
               "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
VAL_LINE = re.compile(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)")


def prepare_nanogpt(checkout: Path, data: Path, work: Path) -> Path:
    """A copy of the checkout with tiny Shakespeare prepared (train.bin, val.bin, meta.pkl)."""
    dest = work / "nanoGPT"
    shutil.copytree(checkout, dest, ignore=shutil.ignore_patterns(".git", "out-*", "*.bin", "assets"))
    prep = dest / "data" / "shakespeare_char"
    shutil.copy(data, prep / "input.txt")  # present, so prepare.py does not download it
    subprocess.run([sys.executable, "prepare.py"], cwd=prep, check=True, capture_output=True, timeout=300)
    return dest


def _watch(proc: subprocess.Popen, started: float, target: float, found: dict, read_val) -> None:
    """Poll `read_val()` (latest [(step, val)]) until one is <= target or the process ends."""
    while True:
        for step, val in read_val():
            found["best"] = min(found.get("best", float("inf")), val)
            if val <= target and "seconds" not in found:
                found.update(seconds=time.perf_counter() - started, step=step, val=val)
                proc.terminate()
                return
        if proc.poll() is not None:
            return
        time.sleep(0.1)


def run_nanogpt(copy: Path, target: float, env: dict, timeout: float) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-u", "train.py", *NANOGPT_CPU], cwd=copy, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found: dict = {}
    lines: list[str] = []

    def reader():
        for line in proc.stdout:
            lines.append(line)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()

    def read_val():
        out = [(int(m.group(1)), float(m.group(2))) for m in map(VAL_LINE.search, lines) if m]
        return out

    _finish(proc, started, target, found, read_val, timeout)
    thread.join(timeout=5)
    if "seconds" not in found and proc.returncode not in (0, None, -15):
        found["error"] = "".join(lines[-20:])
    return found


def run_ours(preset: str, data: Path, target: float, sets: list[str], env: dict, work: Path, name: str,
             timeout: float) -> dict:
    runs_dir = work / "runs"
    overrides = [f"data.source={data}", f"train.target_val_loss={target}", *sets]
    cmd = [sys.executable, "-m", "slm_core", "train", "--preset", preset, "--name", name, "--quiet",
           "--runs-dir", str(runs_dir)] + [x for s in overrides for x in ("--set", s)]
    metrics = runs_dir / name / "metrics.jsonl"
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def read_val():
        if not metrics.exists():
            return []
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip().endswith("}")]
        return [(r["step"], r["val_loss"]) for r in rows if r.get("kind") == "eval"]

    found: dict = {}
    _finish(proc, started, target, found, read_val, timeout)
    status = runs_dir / name / "status.json"
    if status.exists():
        found["overhead"] = json.loads(status.read_text()).get("overhead")
    if "seconds" not in found and proc.returncode not in (0, None, -15):
        found["error"] = proc.stderr.read()[-2000:] if proc.stderr else ""
    return found


def baseline_seconds(nanogpt: dict):
    """nanoGPT's time to the target, or, where its recipe ended short of it, its whole run's wall time."""
    if "seconds" in nanogpt:
        return nanogpt["seconds"]
    if nanogpt.get("best") is not None and "error" not in nanogpt:
        return nanogpt.get("wall")
    return None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _finish(proc, started, target, found, read_val, timeout) -> None:
    cpu_before = _children_cpu()  # runs are sequential: the difference is this run's process alone
    try:
        _watch(proc, started, target, found, read_val)
        proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - started)))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    found["wall"] = round(time.perf_counter() - started, 1)  # the whole run (to the target, or to its end)
    # CPU seconds of the whole run: on a loaded machine a steadier measure of work than the wall time
    found["cpu"] = round(_children_cpu() - cpu_before, 1)


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", required=True, type=Path, help="a nanoGPT checkout (karpathy/nanoGPT)")
    parser.add_argument("--data", required=True, type=Path, help="tiny Shakespeare as one text file")
    parser.add_argument("--preset", default="shakespeare-char-cpu")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--target", type=float, default=1.88)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds before a run counts as a miss")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="override for our recipe")
    parser.add_argument("--only", choices=["ours", "nanogpt"], help="run one side only (for tuning)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both sides (1 is steadier on a busy machine)")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ttq-") as tmp:
        work = Path(tmp)
        env["SLM_CACHE_DIR"] = str(work / "cache")
        copy = prepare_nanogpt(args.nanogpt, args.data, work) if args.only != "ours" else None
        for round_ in range(args.rounds):
            row = {"round": round_ + 1, "load_before": load_average()}
            if args.only != "nanogpt":
                row["ours"] = run_ours(args.preset, args.data, args.target, args.sets, env, work, f"r{round_}",
                                       args.timeout)
            if copy is not None:
                row["nanogpt"] = run_nanogpt(copy, args.target, env, args.timeout)
            row["load_after"] = load_average()
            rows.append(row)
            print(json.dumps(row), flush=True)
    report(rows, args.target)
    return 0


def report(rows: list[dict], target: float) -> None:
    print(f"\nwall time to val <= {target} (s), alternating runs:")
    print(f"{'round':>5} {'ours':>9} {'nanoGPT':>9} {'ratio':>7}  load (1/5/15 min)")
    ratios, cpu_ratios = [], []
    for row in rows:
        ours_cpu, their_cpu = row.get("ours", {}).get("cpu"), row.get("nanogpt", {}).get("cpu")
        if ours_cpu and their_cpu and "seconds" in row.get("ours", {}) and baseline_seconds(row.get("nanogpt", {})):
            cpu_ratios.append(ours_cpu / their_cpu)
        ours = row.get("ours", {}).get("seconds")
        theirs = baseline_seconds(row.get("nanogpt", {}))
        ratio = ours / theirs if ours and theirs else None
        if ratio:
            ratios.append(ratio)
        cell = lambda v: f"{v:9.1f}" if v else f"{'miss':>9}"  # noqa: E731
        for side in ("ours", "nanogpt"):
            if side in row and "seconds" not in row[side]:
                print(f"  {side} missed: best val {row[side].get('best')} after {row[side].get('wall')} s"
                      + (" (its whole run is the baseline)" if side == "nanogpt" and theirs else ""))
        print(f"{row['round']:>5} {cell(ours)} {cell(theirs)} {(f'{ratio:7.2f}' if ratio else '      -')}  "
              f"{row['load_before']} -> {row['load_after']}")
    if ratios:
        print(f"median ratio ours/nanoGPT: {statistics.median(ratios):.2f}x (target <= 0.5x)")
    if cpu_ratios:
        print(f"median CPU-seconds ratio (steadier under load): {statistics.median(cpu_ratios):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
