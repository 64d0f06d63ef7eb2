"""Pure functions from run files (metrics rows, samples, status) to plotly figures, HTML and notes.

Nothing here reads a file or touches Gradio: the tabs pass in what `slm_core.runs` read, so every
function is unit-tested on plain lists. Metric rows follow the run-directory contract: kind=train
rows carry loss, lr, tokens_per_sec, ram_mb, cpu_percent (+ GPU memory on CUDA, + ce_loss/kd_loss
when distilling); kind=eval rows carry val_loss.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import plotly.graph_objects as go
from plotly.subplots import make_subplots

MAX_POINTS = 2000  # per trace: keeps a 1.5 s refresh cheap on long runs
OVERFIT_EVALS = 3  # validation loss rising this many evaluations in a row while training loss falls
COLORS = {"loss": "#2563eb", "val_loss": "#dc2626", "ce_loss": "#0891b2", "kd_loss": "#9333ea",
          "lr": "#059669", "tokens_per_sec": "#d97706", "ram_mb": "#475569", "cpu_percent": "#a3a3a3",
          "gpu_mem_allocated_mb": "#7c3aed", "gpu_mem_reserved_mb": "#c026d3", "gpu_mem_total_mb": "#111827"}
LABELS = {"loss": "train loss", "val_loss": "validation loss", "ce_loss": "cross-entropy (labels)",
          "kd_loss": "distillation (teacher)", "ram_mb": "process RAM", "cpu_percent": "CPU %",
          "gpu_mem_allocated_mb": "GPU allocated", "gpu_mem_reserved_mb": "GPU reserved",
          "gpu_mem_total_mb": "GPU total"}
OOM_ADVICE = ("- a smaller **batch size** (raise gradient accumulation to keep the tokens per step)\n"
              "- turn on **gradient checkpointing**\n- a shorter **context length**\n"
              "- lower **precision** (bf16, or fp16 on older GPUs)")


# ---- shaping the rows ------------------------------------------------------------------------

def latest_attempt(rows: list[dict]) -> list[dict]:
    """Drop rows a resume re-did: after a crash at step 150 and a resume from the step-100 checkpoint,
    metrics.jsonl holds steps 101..150 twice; the second attempt is the one that counts."""
    out: dict[tuple, dict] = {}
    for row in rows:
        kind, step = row.get("kind"), row.get("step")
        if step is None:
            continue
        if kind == "train":
            # A step going back means a resume: forget everything at or after it.
            for key in [k for k in out if k[1] >= step]:
                del out[key]
        out[(kind, step)] = row
    return sorted(out.values(), key=lambda r: (r["step"], r.get("kind") != "train"))


def split_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    rows = latest_attempt(rows)
    return [r for r in rows if r.get("kind") == "train"], [r for r in rows if r.get("kind") == "eval"]


def thin(rows: list[dict], max_points: int = MAX_POINTS) -> list[dict]:
    """Every k-th row so at most ~max_points remain; the last row is always kept."""
    if len(rows) <= max_points:
        return rows
    stride = math.ceil(len(rows) / max_points)
    kept = rows[::stride]
    return kept if kept[-1] is rows[-1] else kept + [rows[-1]]


def series(rows: Iterable[dict], key: str, x: str = "step") -> tuple[list, list]:
    """(xs, ys) for rows that have `key` (and `x`)."""
    pairs = [(r[x], r[key]) for r in rows if r.get(key) is not None and r.get(x) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# ---- figures ---------------------------------------------------------------------------------

def _empty(message: str, height: int = 320) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font=dict(size=15, color="#6b7280"),
                       xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(height=height, template="plotly_white", xaxis_visible=False, yaxis_visible=False,
                      margin=dict(l=20, r=20, t=20, b=20))
    return fig


def _line(xs, ys, key: str, mode: str = "lines", dash: Optional[str] = None, name: Optional[str] = None,
          showlegend: bool = True) -> go.Scatter:
    return go.Scatter(x=xs, y=ys, mode=mode, name=name or LABELS.get(key, key), showlegend=showlegend,
                      line=dict(color=COLORS.get(key), dash=dash, width=2), marker=dict(size=7))


def loss_traces(train: list[dict], evals: list[dict], x: str = "step") -> list[go.Scatter]:
    """Train loss (and the distillation parts when present) as lines, validation loss as markers."""
    traces = []
    for key in ("loss", "ce_loss", "kd_loss"):
        xs, ys = series(train, key, x)
        if xs:
            traces.append(_line(xs, ys, key, dash=None if key == "loss" else "dot"))
    xs, ys = series(evals, "val_loss", x)
    if xs:
        traces.append(_line(xs, ys, "val_loss", mode="lines+markers"))
    return traces


def memory_traces(train: list[dict], x: str = "step") -> list[go.Scatter]:
    traces = []
    for key in ("gpu_mem_allocated_mb", "gpu_mem_reserved_mb", "gpu_mem_total_mb", "ram_mb"):
        xs, ys = series(train, key, x)
        if xs:
            traces.append(_line(xs, ys, key, dash="dash" if key == "gpu_mem_total_mb" else None))
    return traces


def training_figure(rows: list[dict], x: str = "step", log_y: bool = False, revision: str = "") -> go.Figure:
    """The Train tab's live figure: loss, learning rate, tokens/s, memory and CPU stacked on one shared
    x axis (step or tokens), so a memory spike lines up with the loss at the same step."""
    train, evals = split_rows(rows)
    if not train and not evals:
        return _empty("No metrics yet: the curves appear after the first training step.", height=420)
    train = thin(train)
    fig = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        row_heights=[0.43, 0.17, 0.17, 0.23],
                        subplot_titles=("Loss", "Learning rate", "Throughput (tokens/s)", "Memory (MB) and CPU (%)"),
                        specs=[[{}], [{}], [{}], [{"secondary_y": True}]])
    for trace in loss_traces(train, evals, x):
        fig.add_trace(trace, row=1, col=1)
    xs, ys = series(train, "lr", x)
    fig.add_trace(_line(xs, ys, "lr", name="learning rate", showlegend=False), row=2, col=1)
    xs, ys = series(train, "tokens_per_sec", x)
    fig.add_trace(_line(xs, ys, "tokens_per_sec", name="tokens/s", showlegend=False), row=3, col=1)
    for trace in memory_traces(train, x):
        fig.add_trace(trace, row=4, col=1, secondary_y=False)
    xs, ys = series(train, "cpu_percent", x)
    if xs:
        fig.add_trace(_line(xs, ys, "cpu_percent", dash="dot"), row=4, col=1, secondary_y=True)
    fig.update_yaxes(type="log" if log_y else "linear", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=3, col=1)
    fig.update_yaxes(rangemode="tozero", row=4, col=1, secondary_y=False)
    fig.update_yaxes(rangemode="tozero", showgrid=False, row=4, col=1, secondary_y=True)
    fig.update_xaxes(title_text="tokens" if x == "tokens" else "step", row=4, col=1)
    _style(fig, height=760, revision=revision)
    return fig


def _style(fig: go.Figure, height: int, revision: str = "") -> None:
    # uirevision keeps the user's zoom and hidden traces across the 1.5 s refreshes of the same run.
    fig.update_layout(height=height, template="plotly_white", uirevision=revision or None,
                      margin=dict(l=60, r=30, t=40, b=40), hovermode="x unified",
                      legend=dict(orientation="h", yanchor="bottom", y=1.03, xanchor="left", x=0))


def loss_figure(rows: list[dict], x: str = "step", log_y: bool = False, revision: str = "") -> go.Figure:
    """Loss alone (the Runs tab's detail view)."""
    train, evals = split_rows(rows)
    if not train and not evals:
        return _empty("No metrics to show yet.")
    fig = go.Figure(loss_traces(thin(train), evals, x))
    fig.update_xaxes(title_text=x)
    fig.update_yaxes(title_text="loss", type="log" if log_y else "linear")
    _style(fig, height=380, revision=revision)
    return fig


def overlay_figure(curves: dict[str, list[dict]], metric: str = "val_loss", x: str = "step",
                   log_y: bool = False) -> go.Figure:
    """One line per run: validation loss (or training loss) of several runs on shared axes."""
    fig = go.Figure()
    for name, rows in curves.items():
        train, evals = split_rows(rows)
        xs, ys = series(evals if metric == "val_loss" else thin(train), metric, x)
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers" if metric == "val_loss" else "lines",
                                     name=name))
    if not fig.data:
        return _empty("Pick runs with metrics to overlay their curves.")
    fig.update_xaxes(title_text=x)
    fig.update_yaxes(title_text=LABELS.get(metric, metric), type="log" if log_y else "linear")
    _style(fig, height=420)
    return fig
