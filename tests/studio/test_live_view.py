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
    fig, progress, status, notes, samples, log, watched, *buttons, sig = out
    assert {t.name for t in fig.data} >= {"train loss", "validation loss", "learning rate"}
    assert "step 6 / 6" in progress and "finished" in status and notes == ""
    assert "Once upon a time" in samples and "finished: step 6" in log
    assert watched["value"] == name  # the page's run picker is set to the run shown
    assert [b["interactive"] for b in buttons] == [False, False, False, False, False]  # finished: nothing to do
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
