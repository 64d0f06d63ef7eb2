"""The `slm` command: a table from subcommand to one typed function each. A mistake a person can fix prints
one line and exits 2; the Studio launches the same entry point."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from slm_core.cli import (
    data,
    evaluate,
    export,
    generate,
    lineage,
    presets,
    quantize,
    queue,
    runs,
    serve,
    shrink,
    train,
)
from slm_core.errors import SLMError

COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "presets": (presets.add_presets_parser, presets.cmd_presets),
    "train": (train.add_train_parser, train.cmd_train),
    "resume": (train.add_resume_parser, train.cmd_resume),
    "generate": (generate.add_generate_parser, generate.cmd_generate),
    "eval": (evaluate.add_eval_parser, evaluate.cmd_eval),
    "runs": (runs.add_runs_parser, runs.cmd_runs),
    "quantize": (quantize.add_quantize_parser, quantize.cmd_quantize),
    "export": (export.add_export_parser, export.cmd_export),
    "serve": (serve.add_serve_parser, serve.cmd_serve),
    "data": (data.add_data_parser, data.cmd_data),
    "queue": (queue.add_queue_parser, queue.cmd_queue),
    "shrink": (shrink.add_shrink_parser, shrink.cmd_shrink),
    "lineage": (lineage.add_lineage_parser, lineage.cmd_lineage),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="slm", description="Train, fine-tune, quantize and chat with small LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    table = COMMANDS
    for add_parser, _ in table.values():
        add_parser(sub)
    return parser, table


def main(argv: list[str] | None = None) -> int:
    parser, table = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `slm train --nproc N` hands these to each rank
    try:
        return table[args.command][1](args)
    except SLMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
