"""Flags several `slm` commands share, declared once."""

from __future__ import annotations

import argparse


def add_runs_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default=None, help="where runs live (default: $SLM_RUNS_DIR or ./runs)")


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a setting, e.g. --set train.max_steps=200 (repeatable)")


def add_launch_flags(parser: argparse.ArgumentParser) -> None:
    dist = parser.add_argument_group("several processes (launched through torchrun)")
    dist.add_argument("--nproc", type=int, default=1, help="processes on this machine (one per GPU)")
    dist.add_argument("--nnodes", type=int, default=1, help="machines taking part")
    dist.add_argument("--node-rank", type=int, default=0, help="this machine's index, 0 .. nnodes-1")
    dist.add_argument("--rdzv-endpoint", help="HOST:PORT of machine 0, the same on every machine")
