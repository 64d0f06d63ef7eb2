"""The `slm` command: a table from subcommand to one typed function each. A mistake a person can fix prints
one line and exits 2; the Studio launches the same entry point.

Only the invoked command's module is imported (several pull in torch, seconds of start-up), so `slm lineage`,
`slm runs` or `slm --help` start in a fraction of a second; every other command is listed from the table's
one-line help (tests/test_cli_table.py checks it against each module's own parser)."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple

from slm_core.errors import SLMError


class Command(NamedTuple):
    module: str  # under slm_core.cli
    add_parser: str  # adds the full subparser to argparse's subparsers
    run: str  # the handler: args -> exit code
    help: str  # the one line `slm --help` lists


COMMANDS: dict[str, Command] = {
    "presets": Command("presets", "add_presets_parser", "cmd_presets",
                       "list model and recipe presets with parameters and memory"),
    "train": Command("train", "add_train_parser", "cmd_train", "start a run from a recipe preset or a YAML config"),
    "resume": Command("train", "add_resume_parser", "cmd_resume",
                      "continue a stopped or crashed run from its last checkpoint"),
    "generate": Command("generate", "add_generate_parser", "cmd_generate",
                        "generate text from a run, checkpoint or exported model"),
    "eval": Command("evaluate", "add_eval_parser", "cmd_eval", "perplexity of one or more models on a data source"),
    "runs": Command("runs", "add_runs_parser", "cmd_runs", "list runs"),
    "quantize": Command("quantize", "add_quantize_parser", "cmd_quantize",
                        "quantize a model (int8 / int4 / int8-dynamic), optionally with a report"),
    "export": Command("export", "add_export_parser", "cmd_export",
                      "export a model as a Hugging Face folder, GGUF (llama.cpp / Ollama) or ONNX"),
    "serve": Command("serve", "add_serve_parser", "cmd_serve", "serve a model over an OpenAI-compatible HTTP API"),
    "data": Command("data", "add_data_parser", "cmd_data",
                    "prepare token files from a corpus (one shard per machine if asked)"),
    "queue": Command("queue", "add_queue_parser", "cmd_queue",
                     "runs waiting for the training slot: list, add, remove, move, run"),
    "shrink": Command("shrink", "add_shrink_parser", "cmd_shrink",
                      "shrink a model: a student made of N of the teacher's layers, distilled from the teacher "
                      "(same tokenizer)"),
    "lineage": Command("lineage", "add_lineage_parser", "cmd_lineage",
                       "an artifact's family tree: what it came from and what was made from it"),
}


def load(name: str):
    """The module that holds command `name` (imported now, with whatever it needs)."""
    return importlib.import_module(f"slm_core.cli.{COMMANDS[name].module}")


def invoked(argv: list[str]) -> str | None:
    """The command named on the line: `slm` itself takes no options but -h, so it is the first plain word."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(full: str | None = None) -> argparse.ArgumentParser:
    """`slm`'s parser: command `full` with all its flags (its module imported), every other one as its help line."""
    parser = argparse.ArgumentParser(prog="slm", description="Train, fine-tune, quantize and chat with small LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        if name == full:
            getattr(load(name), command.add_parser)(sub)
        else:
            sub.add_parser(name, help=command.help)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = invoked(argv)
    args = build_parser(name).parse_args(argv)
    args.argv = argv  # `slm train --nproc N` hands these to each rank
    try:
        return getattr(load(args.command), COMMANDS[args.command].run)(args)
    except SLMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
