"""Runs tab: every run in the runs directory; open one (plots, samples, config), compare two configs,
overlay loss curves of several, delete one after a confirmation. Reads run directories only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import gradio as gr

from slm_core.errors import SLMError
from slm_core.run import runs
from studio import lineage_view, watch
from studio.desktop.run_open import add_run_opener
from studio.plots import loss_figure, overlay_figure
from studio.security import check_path
from studio.style import mark
from studio.tabs import PRIVATE, QUIET, message
from studio.views import RUN_COLUMNS, config_diff, failure_note, runs_table, sample_timeline_html, status_markdown

TITLE = "Runs"
REFRESH_S = 3.0  # the table follows a training run (a stat() per run when nothing changed)


def build(ctx) -> None:
    with gr.Row():
        refresh = gr.Button("Refresh", scale=0, min_width=120)
        gr.Markdown("Click a row to open the run.", elem_classes="slm-note")
        board = gr.Button("Open TensorBoard", scale=0, min_width=170, elem_id="runs-tensorboard")
    board_link = gr.Markdown("", elem_id="runs-tensorboard-link")
    table = gr.Dataframe(headers=RUN_COLUMNS, value=[], interactive=False, wrap=True, elem_id="runs-table",
                         max_height=360)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            opened = gr.Dropdown([], value=None, label="Open run", elem_id="runs-open")
            status = gr.Markdown("")
            delete = gr.Button("Delete this run…", variant="stop", size="sm")
            with gr.Group(visible=False) as confirm_box:
                confirm_text = gr.Markdown("")
                with gr.Row():
                    confirm = gr.Button("Yes, delete it", variant="stop", size="sm", elem_id="runs-confirm-delete")
                    cancel = gr.Button("Cancel", size="sm")
            deleted = gr.Markdown("")
        with gr.Column(scale=2):
            plot = gr.Plot(loss_figure([]), label="Loss", show_label=False)
    with gr.Accordion("Samples", open=False):
        samples = gr.HTML("")
    with gr.Accordion("Config (config.yaml)", open=False):
        config = gr.Code("", language="yaml", interactive=False)
    with gr.Accordion("Compare two runs' configs", open=False):
        with gr.Row():
            a, b = gr.Dropdown([], label="Run A"), gr.Dropdown([], label="Run B")
        diff = gr.Dataframe(headers=["setting", "A", "B"], value=[], interactive=False, wrap=True)
    with gr.Accordion("Overlay loss curves", open=True):
        with gr.Row():
            several = gr.Dropdown([], multiselect=True, label="Runs", scale=3)
            metric = gr.Radio([("validation loss", "val_loss"), ("validation bits per byte", "val_bpb"),
                               ("training loss", "loss")], value="val_loss", label="Curve", scale=1,
                              elem_id="runs-metric")
        overlay_note = gr.Markdown("", elem_classes="slm-note", elem_id="runs-overlay-note")
        overlay = gr.Plot(overlay_figure({}), label="Overlay", show_label=False)
    lineage_view.build(ctx, opened)  # the family tree: every artifact, its parents and scores (docs/lineage.md)
    pickers = [opened, a, b, several]
    board.click(lambda: open_board(ctx), None, board_link, api_name="tensorboard")
    _wire_list(ctx, refresh, table, pickers, [status, plot, samples, config])
    _wire_open(ctx, table, opened, status, plot, samples, config)
    add_run_opener(ctx, opened, lambda name: open_run(ctx.runs_dir, name), [status, plot, samples, config])  # desktop
    _wire_delete(ctx, opened, delete, confirm_box, confirm_text, confirm, cancel, deleted, table, pickers)
    gr.on([a.change, b.change], lambda x, y: compare(ctx.runs_dir, *check_path(ctx, [x, y], "run")), [a, b], diff,
          **QUIET)
    gr.on([several.change, metric.change],
          lambda names, m: (overlay_runs(ctx.runs_dir, check_path(ctx, names, "run"), m),
                            tokenizer_note(ctx.runs_dir, check_path(ctx, names, "run"), m)),
          [several, metric], [overlay, overlay_note], **QUIET)


def listing(root: Path, current: Optional[str] = None, other_pickers: int = 3) -> list[Any]:
    """The table, every picker, and the open run's panel read afresh (a run that finished since it was
    opened must not still say "running"); the newest run opens when none is open (or it is gone)."""
    summaries = runs.list_runs(root)
    names = [s["name"] for s in summaries]
    keep = current if current in names else (names[0] if names else None)
    return [runs_table(summaries), gr.update(choices=names, value=keep),
            *[gr.update(choices=names) for _ in range(other_pickers)], *open_run(root, keep)]


def follow(root: Path, current: Optional[str], last: Optional[tuple], other_pickers: int = 3) -> list[Any]:
    """The timer's update while runs train: the table, the pickers' choices and the open run's panel, read afresh
    when a run's status changed since `last` (the signature this page saw), else skips. The pickers keep the
    values the user picked: only their choices follow (a row clicked must name a choice)."""
    sig = watch.runs_signature(root)
    n_outputs = 2 + other_pickers + 4 + 1
    if sig == last:
        return [gr.skip()] * n_outputs
    summaries = runs.list_runs(root)
    names = [s["name"] for s in summaries]
    panel = open_run(root, current) if current in names else [gr.skip()] * 4
    return [runs_table(summaries), *[gr.update(choices=names) for _ in range(1 + other_pickers)], *panel, sig]


def _wire_list(ctx, refresh, table, pickers, panel) -> None:
    def listing_here(current: Optional[str] = None):
        return listing(ctx.runs_dir, current, len(pickers) - 1)

    outputs = [table, *pickers, *panel]
    refresh.click(listing_here, pickers[0], outputs, api_name="runs_list")
    ctx.tabs[TITLE].select(listing_here, pickers[0], outputs, **QUIET)
    ctx.on_load.append(dict(fn=listing_here, inputs=pickers[0], outputs=outputs))
    seen = gr.State(None)  # the runs signature this page last drew
    timer = gr.Timer(REFRESH_S)
    timer.tick(lambda current, last: follow(ctx.runs_dir, check_path(ctx, current, "run"), last, len(pickers) - 1),
               [pickers[0], seen], outputs + [seen], concurrency_limit=None, **QUIET)


def _wire_open(ctx, table, opened, status, plot, samples, config) -> None:
    def pick(evt: gr.SelectData, rows):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            return rows.iloc[row, 0] if hasattr(rows, "iloc") else rows[row][0]
        except (IndexError, KeyError):
            return gr.update()

    table.select(pick, table, opened, **QUIET)
    opened.change(lambda name: open_run(ctx.runs_dir, check_path(ctx, name, "run")), opened,
                  [status, plot, samples, config], **QUIET)


def open_run(root: Path, name: Optional[str]) -> list[Any]:
    if not name:
        return ["No runs yet: start one in the Train tab.", loss_figure([]), "", ""]
    run_dir = root / name
    status = runs.read_status(run_dir)
    text = status_markdown(name, status)
    note = failure_note(status)
    try:
        config = (run_dir / "config.yaml").read_text()
    except FileNotFoundError:
        config = "# no config.yaml yet"
    return [text + (f"\n\n{note}" if note else ""), loss_figure(watch.metrics(run_dir), revision=name),
            sample_timeline_html(watch.samples(run_dir)), config]


def compare(root: Path, a: Optional[str], b: Optional[str]) -> list[list[str]]:
    if not a or not b:
        return []
    rows = config_diff(_yaml(root / a / "config.yaml"), _yaml(root / b / "config.yaml"))
    return rows or [["(no differences)", "", ""]]


def _yaml(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except (FileNotFoundError, yaml.YAMLError):
        return {}


def open_board(ctx) -> str:
    """Start TensorBoard over the runs dir (once per Studio) and link to it."""
    from studio.board import Board

    board = ctx.shared.setdefault("runs.board", Board(ctx.runs_dir))
    try:
        url = board.start()
    except SLMError as error:
        return message("error", str(error))
    return message("ok", f"TensorBoard shows every run's scalars, samples (Text) and settings (HParams) at "
                         f"[{url}]({url}) — the same as `tensorboard --logdir {ctx.runs_dir}` in a shell.")


def tokenizer_note(root: Path, names: Optional[list[str]], metric: str) -> str:
    """A warning when runs with different tokenizers are overlaid by a loss per token (not comparable:
    a larger vocabulary packs more text into each token); bits per byte is."""
    vocabularies: dict[str, list[str]] = {}
    for name in names or []:
        tok = _yaml(root / name / "config.yaml").get("tokenizer") or {}
        vocab = (_yaml(root / name / "config.yaml").get("model") or {}).get("vocab_size")
        key = f"{tok.get('kind', '?')} ({vocab or tok.get('vocab_size') or '?'} tokens)"
        vocabularies.setdefault(key, []).append(name)
    if len(vocabularies) < 2:
        return ""
    which = "; ".join(f"{key}: {', '.join(runs_)}" for key, runs_ in vocabularies.items())
    if metric == "val_bpb":
        return f"{mark('info')} These runs use different tokenizers ({which}); bits per byte compares them."
    return (f"{mark('warn')} These runs use different tokenizers ({which}): a loss per token is **not comparable** "
            f"across vocabularies. Pick **validation bits per byte** to compare them.")


def overlay_runs(root: Path, names: Optional[list[str]], metric: str):
    return overlay_figure({n: watch.metrics(root / n) for n in names or []}, metric=metric)


def _wire_delete(ctx, opened, delete, confirm_box, confirm_text, confirm, cancel, deleted, table, pickers) -> None:
    def ask(name):
        if not name:
            return gr.update(visible=False), "", message("error", "Open a run first.")
        return (gr.update(visible=True), f"Delete **{name}** with its checkpoints, metrics and samples? This cannot be "
                f"undone.{lineage_view.dependents_note(ctx.runs_dir, name)}", "")

    def do_delete(name):
        if not check_path(ctx, name, "run"):
            return gr.update(visible=False), message("error", "Open a run first."), gr.update(), *[gr.update()] * 4
        try:
            lineage_view.refuse_orphaning(ctx.runs_dir, name)  # a descendant's only base: the Family tree asks first
            runs.delete_run(ctx.runs_dir / name)
            watch.CACHE.forget(ctx.runs_dir / name)
        except (SLMError, OSError) as error:
            return gr.update(visible=False), message("error", str(error)), gr.update(), *[gr.update()] * 4
        summaries = runs.list_runs(ctx.runs_dir)
        names = [s["name"] for s in summaries]
        return (gr.update(visible=False), message("ok", f"Deleted {name}."), runs_table(summaries),
                gr.update(choices=names, value=None), *[gr.update(choices=names)] * 3)

    delete.click(ask, opened, [confirm_box, confirm_text, deleted], **QUIET)
    cancel.click(lambda: gr.update(visible=False), None, confirm_box, **QUIET)
    confirm.click(do_delete, opened, [confirm_box, deleted, table, *pickers], **PRIVATE)
