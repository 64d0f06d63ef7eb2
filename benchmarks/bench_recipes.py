"""Wall time of every CPU recipe, run as a user runs it, next to the time its description states.

Each recipe is run with `slm train --preset NAME` in a fresh process (start-up, data preparation,
tokenizer training, evaluation, samples and checkpoints all count). Recipes that start from another
run (finetune, LoRA, distillation) get the quickstart-cpu run made first as their base / teacher;
shakespeare-char-cpu needs tiny Shakespeare (--shakespeare) and is skipped without it.

    python benchmarks/bench_recipes.py [--only quickstart-cpu ...] [--shakespeare tinyshakespeare.txt]

A recipe states its time as "measured N min" (or "N s") in its description; a row is flagged when
the measured time is more than 25% over that. Note the machine's load (printed): under load every
time grows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_time_to_quality import _children_cpu, load_average  # noqa: E402  (a sibling script)

from slm_core.config import list_presets, preset_description  # noqa: E402

STATED = re.compile(r"measured (?:about )?([\d.]+) ?(min|s)\b", re.IGNORECASE)
BASE = "quickstart-cpu"  # what finetune / LoRA / distillation start from
NEEDS_BASE = {"finetune": "train.init_from", "lora": "train.init_from", "distill": "distill.teacher"}
# what a recipe needs to fit the quickstart base: its 4 layers cannot give shrink-cpu's default 8
FOR_BASE = {"shrink-cpu": ["distill.shrink_layers=2"]}


def stated_seconds(description: str):
    """The time a description states ("measured 4.5 min"), in seconds, or None."""
    match = STATED.search(description)
    if not match:
        return None
    value = float(match.group(1))
    return value * 60 if match.group(2) == "min" else value


def cpu_recipes() -> list[str]:
    """Base first: the others need its run."""
    names = [name for name in list_presets("recipes") if name.endswith("-cpu")]
    return sorted(names, key=lambda name: name != BASE)


def base_key(name: str):
    """The setting that names the run this recipe starts from (None: it starts from scratch)."""
    from slm_core.config import load_recipe

    return NEEDS_BASE.get(load_recipe(name).train.mode)


def overrides_for(name: str, base_run: str | None, shakespeare: Path | None) -> list[str] | None:
    """What the recipe needs from outside itself; None when that is not at hand (skip it)."""
    if name.startswith("shakespeare"):
        return [f"data.source={shakespeare}"] if shakespeare else None
    key = base_key(name)
    if key is None:
        return []
    return [f"{key}={base_run}", *FOR_BASE.get(name, [])] if base_run else None


def run_recipe(name: str, sets: list[str], runs_dir: Path, env: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "slm_core", "train", "--preset", name, "--name", name, "--quiet",
           "--runs-dir", str(runs_dir)] + [x for s in sets for x in ("--set", s)]
    started, cpu_before = time.perf_counter(), _children_cpu()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        code, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        code, err = "timeout", ""
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu_before
    status_file = runs_dir / name / "status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    # CPU seconds beside the wall time: on a shared machine the wall time grows with others' load
    return {"recipe": name, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "ok": code == 0,
            "steps": status.get("step"), "best_val_loss": status.get("best_val_loss"),
            "overhead": status.get("overhead"),
            **({"error": err.strip().splitlines()[-1] if err.strip() else str(code)} if code != 0 else {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="these recipes (a recipe needing a base also runs quickstart-cpu)")
    parser.add_argument("--shakespeare", type=Path, help="tiny Shakespeare as one text file (for shakespeare-char-cpu)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a recipe counts as failed")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    names = cpu_recipes()
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            parser.error(f"not a CPU recipe: {', '.join(sorted(unknown))} (choose from {', '.join(names)})")
        wanted = set(args.only)
        names = [n for n in names if n in wanted or (n == BASE and any(base_key(w) for w in wanted))]
    print(f"load average before: {load_average()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="recipes-") as tmp:
        runs_dir = Path(tmp) / "runs"
        env["SLM_CACHE_DIR"] = str(Path(tmp) / "cache")  # cold cache: the first run of a recipe, as a user has it
        base_run = None
        for name in names:
            sets = overrides_for(name, base_run, args.shakespeare)
            if sets is None:
                rows.append({"recipe": name, "skipped": "needs --shakespeare" if name.startswith("shakespeare")
                             else f"needs the {BASE} run"})
                continue
            row = run_recipe(name, sets, runs_dir, env, args.timeout)
            row["stated_s"] = stated_seconds(preset_description("recipes", name))
            row["load_after"] = load_average()
            if name == BASE and row["ok"]:
                base_run = str(runs_dir / name)
            rows.append(row)
            print(json.dumps(row), flush=True)
    report(rows)
    return 0 if all(row.get("ok", True) for row in rows) else 1


def report(rows: list[dict]) -> None:
    print(f"\n{'recipe':<24}{'measured':>10}{'stated':>10}{'cpu s':>8}  steps  best val  load after")
    for row in rows:
        if "skipped" in row:
            print(f"{row['recipe']:<24}{'skipped':>10}  ({row['skipped']})")
            continue
        stated = row.get("stated_s")
        flag = "" if row["ok"] else f"  FAILED: {row.get('error')}"
        if row["ok"] and stated and row["wall_s"] > 1.25 * stated:
            flag = "  over the stated time by more than 25%"
        if row["ok"] and stated is None:
            flag = "  (description states no measured time)"
        best = f"{row['best_val_loss']:.3f}" if row.get("best_val_loss") else "-"
        stated_text = _clock(stated) if stated else "-"
        print(f"{row['recipe']:<24}{_clock(row['wall_s']):>10}{stated_text:>10}{row['cpu_s']:>8.0f}  "
              f"{row.get('steps') or '-':>5}  {best:>8}  {row.get('load_after', '')}{flag}")


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


if __name__ == "__main__":
    sys.exit(main())
