"""`slm`'s lazy command table: the help it lists without importing a command matches each command's own parser,
and a torch-free command runs without torch ever being imported."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slm_core.cli import COMMANDS, build_parser, invoked, main

REPO = Path(__file__).resolve().parents[1]


def _listed(parser: argparse.ArgumentParser) -> dict[str, str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: choice.help for choice in sub._choices_actions}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_table_help_is_the_commands_own(name):
    assert _listed(build_parser(name))[name] == COMMANDS[name].help


def test_help_lists_every_command_in_order(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert list(_listed(build_parser())) == list(COMMANDS)
    for name, command in COMMANDS.items():
        assert name in out and command.help[:30] in out


def test_invoked_is_the_first_plain_word():
    assert invoked(["lineage", "--json", "x"]) == "lineage"
    assert invoked(["--help"]) is None
    assert invoked(["nonsense", "runs"]) is None


def test_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit) as done:
        main(["nonsense"])
    assert done.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_torch_free_commands_never_import_torch(tmp_path):
    """One fresh process runs lineage, runs, queue and --help, then reports what it imported (`slm presets`
    counts parameters on torch's meta device, so it needs torch)."""
    code = ("import contextlib, io, json, sys\n"
            "from slm_core.cli import main\n"
            "codes = []\n"
            "for argv in (['lineage', '--json'], ['runs'], ['queue'], ['--help'], ['lineage', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            codes.append(main(argv))\n"
            "        except SystemExit as done:\n"
            "            codes.append(done.code)\n"
            "print(json.dumps({'codes': codes, 'torch': 'torch' in sys.modules}))\n")
    env = dict(os.environ, SLM_RUNS_DIR=str(tmp_path), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 0, 0, 0, 0], "torch": False}
