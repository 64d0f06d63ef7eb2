"""The allow-list is a property of the engine's file-opening entry points (slm_core.allowlist): in a confined
process (the Studio's helpers and the runs it launches) a user-named file outside the allowed folders is
refused whatever its name or suffix, a symlink out of an allowed folder included, before anything is read,
and no error quotes a byte of it. A person's own `slm` command is not confined."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slm_core.allowlist import ENV_VAR, AllowList, confined, readable
from slm_core.data.sources import source_kind
from slm_core.errors import SLMError
from slm_core.models.sources import resolve_source
from slm_core.post.judge import _prompts_from_file
from slm_core.post.tasks import task_configs

REPO = Path(__file__).resolve().parents[1]
SECRET = "TOPSECRET-allowlist-5d1"


@pytest.fixture
def world(tmp_path):
    """(allowed folder, outside folder): the outside one holds secret files and a folder shaped like a model;
    the allowed one holds links to each."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (outside / "model").mkdir(parents=True)
    allowed.mkdir()
    (outside / "notes").write_text(json.dumps({"prompt": SECRET, "reference": SECRET}) + "\n")
    (outside / "corpus.txt").write_text(f"{SECRET} " * 100)
    (outside / "model" / "tokenizer.json").write_text(json.dumps({"secret": SECRET}))
    (outside / "model" / "config.json").write_text(json.dumps({"secret": SECRET}))
    for name, target in [("notes", "notes"), ("corpus.txt", "corpus.txt"), ("model", "model")]:
        (allowed / name).symlink_to(outside / target)
    (allowed / "mine.txt").write_text("An allowed little corpus. " * 20)
    return allowed, outside


def refused(call) -> str:
    with pytest.raises(SLMError) as caught:
        call()
    message = str(caught.value)
    assert "outside the folders" in message and SECRET not in message, message
    return message


def test_confined_entry_points_refuse_paths_and_links_outside_whatever_their_name(world):
    allowed, outside = world
    with confined([allowed]):
        for path in (outside / "corpus.txt", allowed / "corpus.txt", outside / "notes", allowed / "notes"):
            refused(lambda: source_kind(str(path)))
            refused(lambda: task_configs([str(path)]))  # no .jsonl suffix: still opened as a file, so checked
            refused(lambda: _prompts_from_file(str(path), 5))
        for folder in (outside / "model", allowed / "model"):
            refused(lambda: resolve_source(str(folder), runs_dir=allowed))
            refused(lambda: readable(folder))
        refused(lambda: resolve_source(str(outside / "nothing-here"), runs_dir=allowed))  # existence not probed
        assert source_kind(str(allowed / "mine.txt"))[0] == "text"  # inside: read as usual


def test_confined_names_that_are_not_paths_keep_their_meaning(world, monkeypatch):
    """A bare name is a run in the runs folder or a harness task, `org/name` a Hub id: never something in the
    working folder, which a confined process may not read."""
    allowed, outside = world
    monkeypatch.chdir(outside)  # the working folder is outside: its `corpus.txt` and `model` are not looked at
    (outside / "owner").mkdir()
    (outside / "owner" / "dataset").write_text(SECRET)
    (outside / "hellaswag").write_text(SECRET)
    (outside / "elsewhere").mkdir()
    (outside / "elsewhere" / "config.json").write_text(SECRET)
    with confined([allowed]):
        assert source_kind("owner/dataset") == ("hub", "owner/dataset")
        assert task_configs(["hellaswag"]) == ([], ["hellaswag"])
        message = str(pytest.raises(SLMError, resolve_source, "elsewhere", runs_dir=allowed).value)
        assert "no run named" in message and SECRET not in message


def test_unconfined_the_same_paths_open(world):
    """A person's own command reads what they name (the links included)."""
    allowed, _ = world
    assert source_kind(str(allowed / "corpus.txt"))[0] == "text"
    assert task_configs([str(allowed / "notes")])[0]
    assert _prompts_from_file(str(allowed / "notes"), 5)[0]["prompt"] == SECRET


def test_a_child_process_inherits_the_confinement_from_its_environment(world):
    """The Studio starts runs with SLM_ALLOWED_ROOTS set: the run's own reads are refused outside."""
    allowed, outside = world
    code = ("from slm_core.data.sources import source_kind\nimport sys\n"
            "try:\n    source_kind(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    env = dict(os.environ, **AllowList([allowed]).environ(), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, str(allowed / "corpus.txt")], env=env, capture_output=True,
                         text=True, timeout=60).stdout
    assert out.startswith("SLMError") and "outside the folders" in out and SECRET not in out, out
    assert ENV_VAR in env


def test_allowing_a_file_allows_its_folder_but_never_the_whole_file_system(tmp_path):
    (tmp_path / "x.txt").touch()
    allow_list = AllowList()
    assert allow_list.allow(tmp_path / "x.txt") == tmp_path.resolve() and allow_list.allows(tmp_path / "y.txt")
    with pytest.raises(SLMError, match="whole file system"):
        allow_list.allow("/")
