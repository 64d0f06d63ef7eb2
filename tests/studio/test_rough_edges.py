"""The page's rough edges (issue 26), each pinned at the handler that decides it. What only a browser shows
(layout, toasts) is walked in tests/e2e/test_browser.py."""

from pathlib import Path

import gradio as gr
import pytest

from slm_core.run import queue as runqueue
from slm_core.run import runs
from studio import watch
from studio.plots import run_events, training_figure
from studio.run_form import fresh_run_name
from studio.tabs.runs import follow
from studio.views import progress_html

TINY = ["tokenizer.kind=char", "data.max_chars=200000", "model.context_length=64", "model.vocab_size=null",
        "model.n_layer=1", "train.batch_size=8", "train.precision=fp32", "train.eval_batches=2",
        "train.sample_tokens=4", "train.warmup_steps=2", "train.lr=0.003", "train.max_steps=4",
        "train.eval_interval=4", "train.ckpt_interval=2"]


def test_a_recipe_change_proposes_a_run_name_no_run_or_queued_entry_has(tmp_path):
    (tmp_path / "tiny-gpt-cpu-1").mkdir()
    runqueue.add(tmp_path, "quickstart-cpu", [], "tiny-gpt-cpu-2")
    assert fresh_run_name(tmp_path, "tiny-gpt-cpu") == "tiny-gpt-cpu-3"
    assert fresh_run_name(tmp_path, "quickstart-cpu") == "quickstart-cpu-1"
    # A loaded run's settings (the Recipe box holds its config.yaml): named after the run.
    assert fresh_run_name(tmp_path, str(tmp_path / "first" / "config.yaml")) == "first-1"


def test_the_train_tab_without_any_run_shows_no_starting_bar():
    assert "starting" not in progress_html({}, [], run=None)
    assert "starting" in progress_html({}, [], run="just-launched")  # a run that exists but has not reported


@pytest.mark.slow  # a real 4-step run (~30 s on a loaded 2-core machine)
def test_save_now_is_its_own_marker_on_the_live_figure(tmp_path):
    """A real run asked to save at step 2 (control/save, what Save checkpoint now writes): its checkpoint row
    says it was asked for, and the figure draws it as "saved now", apart from the scheduled checkpoint."""
    from slm_core.config import load_recipe
    from slm_core.train.loop import train

    run_dir = tmp_path / "run"

    def ask(row: dict) -> None:
        if row.get("kind") == "train" and row.get("step") == 1:
            runs.request(run_dir, "save")  # taken before step 2

    train(load_recipe("quickstart-cpu", TINY), run_dir, callback=ask, progress=False)
    rows = runs.read_metrics(run_dir)
    events = {(e["event"], e["step"]) for e in run_events(rows)}
    assert ("saved_now", 1) in events and ("checkpoint", 2) in events
    assert ("checkpoint", 1) not in events
    names = {trace.name for trace in training_figure(rows).data}
    assert {"saved now", "checkpoint"} <= names


def test_the_runs_table_follows_a_run_without_touching_the_picked_run(tmp_path):
    for name, started in (("older", 1.0), ("live", 2.0)):
        runs.write_status(tmp_path / name, state="running", step=10, max_steps=100, started_at=started)
    first = follow(tmp_path, "older", None)
    sig = first[-1]
    assert [row[0] for row in first[0]] == ["live", "older"]
    assert all("value" not in update for update in first[1:5])  # choices only: the user's picks stay
    assert "older" in first[5]  # the open run's panel read afresh
    assert follow(tmp_path, "older", sig) == [gr.skip()] * len(first)  # nothing changed: nothing redrawn
    runs.write_status(tmp_path / "live", state="running", step=50)
    later = follow(tmp_path, "older", sig)
    assert later[-1] != sig and "50 / 100" in [row[4] for row in later[0] if row[0] == "live"][0]


def test_saving_my_recipe_keeps_the_loaded_runs_choice_beside_the_saved_one(tmp_path):
    from studio.tabs.train import saved_recipe_update

    loaded = str(tmp_path / "first" / "config.yaml")
    update = saved_recipe_update(loaded, "quickstart-cpu")
    values = [c[1] if isinstance(c, tuple) else c for c in update["choices"]]
    assert update["value"] == "quickstart-cpu" and loaded in values  # an event sent with the old value passes


def test_watch_runs_signature_changes_with_a_status(tmp_path):
    runs.write_status(tmp_path / "a", state="running", step=1)
    before = watch.runs_signature(tmp_path)
    runs.write_status(tmp_path / "a", state="running", step=2, note="x" * 10)
    assert watch.runs_signature(tmp_path) != before
    assert watch.runs_signature(Path(tmp_path) / "missing") == ()


def test_a_stopped_reply_says_so_and_the_model_never_sees_the_mark():
    from studio.tabs.chat import STOPPED, Replying, without_marks

    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hel" + STOPPED},
               {"role": "assistant", "content": [{"type": "text", "text": "lo" + STOPPED}]}]
    clean = without_marks(history)
    assert clean[1]["content"] == "hel" and clean[2]["content"][0]["text"] == "lo"
    assert history[1]["content"].endswith(STOPPED)  # the page keeps showing it
    replying = Replying()
    assert replying.enter("tab") and not replying.enter("tab")  # a second message while one is written: refused
    assert replying.busy("tab") and replying.enter("other-tab")
    replying.leave("tab")
    assert not replying.busy("tab") and replying.enter("tab")


def test_the_model_tab_offers_a_refused_folder_and_its_parent(tmp_path):
    from types import SimpleNamespace

    from studio.allow import AllowBox
    from studio.security import PathPolicy

    (tmp_path / "models" / "llama").mkdir(parents=True)
    ctx = SimpleNamespace(paths=PathPolicy(tmp_path / "runs"), exposed_without_login=False)
    with gr.Blocks():
        box = AllowBox(ctx, "model-allow", parent=True, retried=True)
    shown, text, parent_button, folder = box.offer(["model"], [str(tmp_path / "models" / "llama")])
    assert shown["visible"] and parent_button["visible"] and folder == str((tmp_path / "models" / "llama").resolve())
    assert f"`{(tmp_path / 'models').resolve()}`" in text and "run it again" not in text  # the details rerun
    hidden, note, _ = box.allow_parent(folder)
    assert "Allowed" in note and ctx.paths.allows(tmp_path / "models" / "qwen")  # the whole folder of models


def test_the_model_tab_has_an_allow_box(tmp_path):
    from studio.app import build_app

    demo = build_app(tmp_path / "runs")
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"model-allow", "model-allow-parent", "model-allow-note"} <= ids


def test_token_counts_and_preview_go_when_the_source_changes():
    from studio.tabs.data import TOKENS_PENDING, preview, stale_tokens

    tokens, lengths = stale_tokens()
    assert tokens == TOKENS_PENDING and lengths["visible"] is False

    class Helper:
        def call(self, name, args):
            return {"summary": {"n_documents": 2, "n_chars": 10, "kind": "text"}, "texts": ["a", "b"]}

    assert "after tokenizing" not in preview(Helper(), "x.txt", "", "", 0)[0]  # said by the token panel instead


def test_the_histogram_title_sits_above_the_plot_clear_of_its_toolbar():
    from studio.plots import length_figure

    fig = length_figure({"length_histogram": {"log2_bins": [1, 2, 3]}})
    assert fig.layout.title.x == 0 and fig.layout.title.xanchor == "left" and fig.layout.title.yanchor == "bottom"
    assert fig.layout.margin.t >= 60


@pytest.mark.slow  # two quantizations with reports in the job helper
def test_a_second_quantization_reuses_the_originals_measurement_and_sizes_read_as_the_report_card(
        copy_of_tiny_run, helper, tmp_path):
    import json

    from slm_core.post.report_card import to_markdown
    from studio.tabs import quantize as tab

    tab.ORIGINALS.clear()
    runs_dir, name = copy_of_tiny_run(tmp_path)
    tab.quantize_run(helper, runs_dir, name, "best", "int8", 64, True, 2000)
    _, table, _, _ = tab.quantize_run(helper, runs_dir, name, "best", "int4", 32, True, 2000)
    reports = [json.loads((runs_dir / name / "quantized" / label / "report.json").read_text())
               for label in ("int8", "int4-g32")]
    assert reports[0]["rows"][0] == reports[1]["rows"][0]  # one measurement of the original, reused
    original, *variants = table
    speed = reports[1]["rows"][0]["tokens_per_sec"]
    assert original[4] == f"{speed:.1f}"
    rows = {r["rows"][1]["model"]: r["rows"][1] for r in reports}
    assert sorted(cells[0] for cells in variants) == sorted(rows)
    for cells in variants:
        row = rows[cells[0]]
        assert cells[4] == f"{row['tokens_per_sec']:.1f} ({row['tokens_per_sec'] / speed:.2f}×)"
    weights = (runs_dir / name / "quantized" / "int8" / "model.safetensors").stat().st_size
    card = {"model": "int8", "parameters": 1, "size_bytes": weights, "ppl_own": None, "ppl_common": None}
    size_cell = next(cells for cells in variants if cells[0] == "int8")[1].split(" (")[0]
    assert f"| {size_cell} |" in to_markdown([card])  # one formatter, one source: the same text in both
