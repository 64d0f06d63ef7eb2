"""`slm` start-up in a fresh process: wall time and whether torch was imported, per command (median of N).

Side by side in one run: the `slm` command as it is (each command's module loaded only when that command runs)
against the same entry point after importing every command module first, which is what the command table did
before it became lazy (issue 24's 3-6 s for `slm lineage NAME`).

    python benchmarks/bench_cli_startup.py [--repeat 5]

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
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO))

LAZY = "import sys; from slm_core.cli import main; sys.exit(main())"
# The old table imported every command module at start-up; importing them first reproduces it.
EAGER = ("import importlib, sys; from slm_core.cli import COMMANDS, main; "
         "[importlib.import_module(spec.module) for spec in COMMANDS.values()]; sys.exit(main())")

CASES = [
    ("slm lineage X", ["lineage", "X"]),
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
        print(f"{'command':<22}{'lazy s':>9}{'torch':>7}{'eager s':>10}{'torch':>7}{'lazy/eager':>12}")
        for label, argv in CASES:
            # Interleaved so that a load spike on this machine hits both sides alike.
            lazy, lazy_torch = median_of(LAZY, argv, runs_dir, args.repeat)
            eager, eager_torch = median_of(EAGER, argv, runs_dir, args.repeat)
            print(f"{label:<22}{lazy:>9.2f}{'yes' if lazy_torch else 'no':>7}{eager:>10.2f}"
                  f"{'yes' if eager_torch else 'no':>7}{lazy / eager:>12.2f}")


if __name__ == "__main__":
    main()
