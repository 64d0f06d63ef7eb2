"""`slm` start-up in a fresh process: wall time and whether torch was imported, per command (median of N).

Side by side in one run: the `slm` command as it is (each command's module loaded only when that command runs)
against the same entry point after importing every command module first, which is what the command table did
before it became lazy (issue 24's 3-6 s for `slm lineage NAME`).

    python benchmarks/bench_cli_startup.py [--repeat 5]

The runs folder holds 50 synthetic artifacts (bench_lineage.make_forest).

Figures (2-core CPU machine under other engineers' load, 2026-12-05, median of 5, seconds, -X importtime on):

    command               lazy  torch   eager  torch  lazy/eager
    slm lineage pre-0     0.19     no    2.52    yes        0.07
    slm runs              0.14     no    2.73    yes        0.05
    slm presets           4.01    yes    4.89    yes        0.82   (counts parameters with torch: no gain)
    slm queue             0.14     no    2.40    yes        0.06
    slm --help            0.09     no    2.19    yes        0.04
    slm lineage --help    0.14     no    2.79    yes        0.05

Before the change, the same machine, plain wall time of the old `slm` (median of 5): lineage 2.20 s, runs 2.21 s,
--help 2.97 s; `import slm_core.cli` alone took 2.66 s under -X importtime, 2.01 s of it torch.

Target: under 1 s for the torch-free commands (lineage, runs, queue, --help; `slm presets` counts parameters
on torch's meta device, so it loads torch when it runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_lineage import make_forest  # noqa: E402

ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO))

LAZY = "import sys; from slm_core.cli import main; sys.exit(main())"
# The old table imported every command module at start-up; importing them first reproduces it.
EAGER = ("import importlib, sys; from slm_core.cli import COMMANDS, main; "
         "[importlib.import_module('slm_core.cli.' + spec.module) for spec in COMMANDS.values()]; sys.exit(main())")

CASES = [
    ("slm lineage pre-0", ["lineage", "pre-0"]),
    ("slm runs", ["runs"]),
    ("slm presets", ["presets"]),
    ("slm queue", ["queue"]),
    ("slm --help", ["--help"]),
    ("slm lineage --help", ["lineage", "--help"]),
]


def one(code: str, argv: list[str], runs_dir: str) -> tuple[float, bool]:
    """Seconds of one fresh `python -X importtime` process, and whether it imported torch."""
    env = dict(ENV, SLM_RUNS_DIR=runs_dir)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *argv], env=env, cwd=runs_dir,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"slm {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    torch = any(line.rsplit("|", 1)[-1].strip() == "torch" for line in done.stderr.splitlines())
    return seconds, torch


def median_of(code: str, argv: list[str], runs_dir: str, repeat: int) -> tuple[float, bool]:
    samples = [one(code, argv, runs_dir) for _ in range(repeat)]
    return statistics.median(s for s, _ in samples), any(t for _, t in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs_dir:
        make_forest(Path(runs_dir), 50)  # bench_lineage's synthetic week of artifacts, 'pre-0' among them
        print(f"{'command':<22}{'lazy s':>9}{'torch':>7}{'eager s':>10}{'torch':>7}{'lazy/eager':>12}")
        for label, argv in CASES:
            # Interleaved so that a load spike on this machine hits both sides alike.
            lazy, lazy_torch = median_of(LAZY, argv, runs_dir, args.repeat)
            eager, eager_torch = median_of(EAGER, argv, runs_dir, args.repeat)
            print(f"{label:<22}{lazy:>9.2f}{'yes' if lazy_torch else 'no':>7}{eager:>10.2f}"
                  f"{'yes' if eager_torch else 'no':>7}{lazy / eager:>12.2f}")


if __name__ == "__main__":
    main()
