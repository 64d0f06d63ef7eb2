"""Bugs a first-time user met walking every tab (issue 12), each pinned by a test that failed before its fix.
The ones that live in the page itself are also walked in the real browser (tests/e2e/test_browser.py)."""

import os
import re
from pathlib import Path

import yaml

from slm_core.run import runs
from studio.command import runs_dir_arg, runs_dir_flag, shell_command, train_args
from studio.style import mark
from studio.tabs import message
from studio.tabs.data import KINDS, kind_of
from studio.tabs.runs import listing, tokenizer_note
from studio.views import failure_note, log_tail, sample_text


def test_1_a_blank_source_keeps_the_chosen_kind_and_an_upload_reads_as_upload(tmp_path):
    uploads = tmp_path / "uploads"
    assert kind_of("", uploads) is None  # was "Built-in stories": picking Upload snapped back
    assert kind_of(str(uploads / "sixty.txt"), uploads) == KINDS[3]  # was "Local file or folder"
    assert kind_of("builtin", uploads) == KINDS[0] and kind_of("builtin:instructions") == KINDS[1]
    assert kind_of("roneneldan/TinyStories") == KINDS[4] and kind_of(str(tmp_path / "x.txt"), uploads) == KINDS[2]


def test_2_copy_as_command_names_the_runs_dir_the_studio_was_started_with(tmp_path, monkeypatch):
    root = tmp_path / "elsewhere"
    monkeypatch.setenv("SLM_RUNS_DIR", str(root))  # what launch() sets in the server's own environment
    assert runs_dir_arg(root) == str(root)  # was None: the flag looked unneeded
    assert f"--runs-dir {root}" in shell_command(train_args("quickstart-cpu", [], None, runs_dir_arg(root)))
    assert runs_dir_flag(root) == ["--runs-dir", str(root)]
    monkeypatch.chdir(tmp_path)
    assert runs_dir_arg(tmp_path / "runs") is None  # ./runs is what a shell here picks by itself


def test_3_refresh_reads_the_open_runs_panel_again(tiny_run, tmp_path):
    import shutil

    root, name = tiny_run
    from slm_core.run import lock as run_lock

    shutil.copytree(root / name, tmp_path / name)
    (tmp_path / name / run_lock.LOCK_FILE).unlink(missing_ok=True)  # no lock left: the pid says who writes
    runs.write_status(tmp_path / name, state="running", step=3, pid=os.getpid())  # a live worker
    before = listing(tmp_path, name)
    runs.write_status(tmp_path / name, state="finished", step=6)
    after = listing(tmp_path, name)  # Refresh with the same run open
    assert "running" in before[5] and "finished" in after[5]  # the panel's status, not only the table's


def test_4_a_quantized_model_counts_the_parameters_of_the_original(copy_of_tiny_run, tmp_path):
    from studio import jobs
    from studio.chat_session import ChatSession

    root, name = copy_of_tiny_run(tmp_path)
    jobs.quantize(str(root / name), method="int4", group_size=32, report=False)
    session = ChatSession(root, backend="native")
    session.ensure(str(root / name), "best")
    original = re.search(r"([\d.]+[KM]) parameters", session.describe()).group(1)
    session.ensure(str(root / name / "quantized" / "int4-g32"), "best")
    quantized = re.search(r"([\d.]+[KM]) parameters", session.describe()).group(1)
    assert original == quantized == "0.9M"  # the int4 copy read 0.5M beside the original's 3.5M


def test_7_status_marks_are_words_not_emoji():
    for kind, word in (("ok", "OK"), ("error", "Error"), ("info", "Note")):
        text = message(kind, "done")
        assert mark(kind) in text and f">{word}<" in text
        assert not any(ord(ch) > 0x2000 for ch in text)  # no emoji an emoji-less font would draw as a box
    assert mark("error") in failure_note({"state": "failed", "error": "boom", "step": 3})


def test_9_samples_show_no_replacement_characters_and_the_log_one_progress_line(tiny_run):
    html = sample_text("is\ufffd\ufffd fl<help")
    assert "\ufffd" not in html and "2 byte(s) that are not valid UTF-8" in html and "fl&lt;help" in html
    root, name = tiny_run
    log = (root / name / "log.txt").read_text()
    redraws = log.count("/6 [")  # the bar of a 6-step run: one redraw a step, not two (update + postfix)
    assert redraws <= 6 + 3, log_tail(log)


def test_10_the_overlay_warns_when_tokenizers_differ(tmp_path):
    for name, kind, vocab in (("a", "bpe", 512), ("b", "gpt2", 50257), ("c", "bpe", 512)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(
            {"model": {"vocab_size": vocab}, "tokenizer": {"kind": kind, "vocab_size": vocab}}))
    assert tokenizer_note(tmp_path, ["a", "c"], "val_loss") == ""
    note = tokenizer_note(tmp_path, ["a", "b"], "val_loss")
    assert "not comparable" in note and "bits per byte" in note and "gpt2 (50257 tokens): b" in note
    assert "bits per byte compares them" in tokenizer_note(tmp_path, ["a", "b"], "val_bpb")


def test_tensorboard_button_serves_the_runs_dir(tiny_run):
    """The Runs tab's button: TensorBoard on loopback over the runs dir, listing the run."""
    import json
    import urllib.request

    from studio.board import Board

    root, name = tiny_run
    board = Board(root)
    try:
        url = board.start(timeout=120)
        assert url.startswith("http://127.0.0.1:") and board.start() == url  # once per Studio
        with urllib.request.urlopen(url + "data/runs", timeout=30) as response:
            assert f"{name}/tensorboard" in json.loads(response.read())
    finally:
        board.stop()
    assert not board.running and os.environ.get("SLM_RUNS_DIR") != ""  # nothing left behind
    assert Path(root / name / "tensorboard").is_dir()
