"""The Train tab's live view and the Runs tab read a run directory; unchanged files cost nothing."""

import gradio as gr

from studio import app, watch
from studio.tabs.data import save_uploads
from studio.tabs.runs import compare, open_run, overlay_runs
from studio.tabs.train import default_run, refresh


def test_refresh_draws_a_run_and_skips_when_nothing_changed(tiny_run):
    root, name = tiny_run
    ctx = app.build_app(root).studio
    assert default_run(ctx) == name  # a fresh page shows the newest run
    out = refresh(ctx, None, "step", False, None)
    fig, progress, status, notes, samples, log, watched, *buttons, start, queue, queued, notice, sig = out
    assert {t.name for t in fig.data} >= {"train loss", "validation loss", "learning rate"}
    assert "step 6 / 6" in progress and "finished" in status and notes == ""
    assert "Once upon a time" in samples and "finished: step 6" in log
    assert watched["value"] == name  # the page's run picker is set to the run shown
    assert [b["interactive"] for b in buttons] == [False, False, False, False, False]  # finished: nothing to do
    assert start["value"] == "Start" and "empty" in queue and queued["choices"] == []  # nothing running or queued
    # The loss in bits per byte, from the bytes per token the run recorded.
    bpb = refresh(ctx, name, "step", False, None, "bpb")[0]
    assert bpb.layout.yaxis.title.text == "bits per byte" and max(bpb.data[0].y) < max(fig.data[0].y)
    again = refresh(ctx, name, "step", False, sig)
    assert all(x == gr.skip() for x in again)
    tokens_axis = refresh(ctx, name, "tokens", True, sig)[0]
    assert tokens_axis.layout.yaxis.type == "log" and max(tokens_axis.data[0].x) > 6


def test_incremental_reading_sees_appended_lines_and_ignores_a_half_written_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "train", "st')
    assert [r["step"] for r in watch.metrics(tmp_path)] == [1]
    with open(path, "a") as handle:
        handle.write('ep": 2}\n{"kind": "eval", "step": 2}\n')
    assert [r["step"] for r in watch.metrics(tmp_path)] == [1, 2, 2]
    path.write_text('{"kind": "train", "step": 1}\n')  # rewritten (a run deleted and made again)
    assert len(watch.metrics(tmp_path)) == 1


def test_runs_tab_opens_compares_and_overlays(tiny_run, tmp_path):
    root, name = tiny_run
    status, fig, samples, config = open_run(root, name)
    assert "finished" in status and fig.data and "<table" in samples and "max_steps: 6" in config
    assert compare(root, name, name) == [["(no differences)", "", ""]]
    assert [t.name for t in overlay_runs(root, [name], "val_loss").data] == [name]


def test_uploads_are_copied_out_of_gradios_temporary_folder(tmp_path):
    one = tmp_path / "a.txt"
    one.write_text("hello")
    two = tmp_path / "b.jsonl"
    two.write_text('{"text": "x"}\n')
    runs_dir = tmp_path / "runs"
    single = save_uploads([str(one)], runs_dir)
    assert single == str(runs_dir / "uploads" / "a.txt") and (runs_dir / "uploads" / "a.txt").read_text() == "hello"
    folder = save_uploads([str(one), str(two)], runs_dir)
    assert sorted(p.name for p in (runs_dir / "uploads").glob("upload-*/*")) == ["a.txt", "b.jsonl"]
    assert folder.startswith(str(runs_dir / "uploads" / "upload-"))


def test_a_notice_about_the_run_goes_when_the_run_ends(tiny_run):
    """Bug: "Resuming ... from its last checkpoint" stayed on screen after the run had finished."""
    root, name = tiny_run
    ctx = app.build_app(root).studio
    first = refresh(ctx, name, "step", False, None)
    assert first[-2] == gr.skip()  # a page opening on a finished run leaves the message box alone
    was_running = dict(first[-1], state="running")  # what the page saw while the resumed run trained
    assert refresh(ctx, name, "step", False, was_running)[-2] == ""


def test_the_form_follows_a_run_and_clones_it(tiny_run, tmp_path, monkeypatch, capsys):
    """Load a run's settings into the page's fields; Start from them trains the same config."""
    from slm_core.config import load_recipe, load_run_config
    from studio.command import page_overrides
    from studio.run_form import clone_name, run_settings, save_recipe

    root, name = tiny_run
    keys = list(app.build_app(root).studio.fields)
    recipe, preset, values = run_settings(root, name, keys)
    assert recipe == str(root / name / "config.yaml") and preset == "tiny-llama"
    form = dict(zip(keys, values))
    assert form["train.max_steps"] == 6 and form["model.n_layer"] == 1 and form["tokenizer.vocab_size"] == 512
    # Untouched: no overrides at all, and the run's config comes back whole.
    assert page_overrides(recipe, preset, form) == []
    assert load_recipe(recipe).to_dict() == load_run_config(root / name / "config.yaml").to_dict()
    assert clone_name(root, name) == f"{name}-clone"
    # Saved as the user's own recipe: listed, and loadable by name.
    monkeypatch.setenv("SLM_RECIPES_DIR", str(tmp_path / "mine"))
    path = save_recipe("my-tiny", recipe, preset, {**form, "train.max_steps": 9})
    from slm_core.config import list_presets

    assert path.parent == tmp_path / "mine" and "my-tiny" in list_presets("recipes")
    assert load_recipe("my-tiny").train.max_steps == 9 and load_recipe("my-tiny").model.n_layer == 1
    from slm_core.cli import main

    assert main(["presets"]) == 0 and "my-tiny" in capsys.readouterr().out  # `slm presets` lists it too
