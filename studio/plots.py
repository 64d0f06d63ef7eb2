"""Pure functions from run files (metrics rows, samples, status) to plotly figures, HTML and notes; the tabs
pass in what slm_core.run.runs read."""

from __future__ import annotations

import math
from typing import Iterable, Optional

import plotly.graph_objects as go
from plotly.subplots import make_subplots

MAX_POINTS = 2000  # per trace: keeps a 1.5 s refresh cheap on long runs
OVERFIT_EVALS = 3  # validation loss rising this many evaluations in a row while training loss falls
COLORS = {"loss": "#2563eb", "val_loss": "#dc2626", "ce_loss": "#0891b2", "kd_loss": "#9333ea", "nll_loss": "#0891b2",
          "lr": "#059669", "tokens_per_sec": "#d97706", "ram_mb": "#475569", "cpu_percent": "#a3a3a3",
          "gpu_mem_allocated_mb": "#7c3aed", "gpu_mem_reserved_mb": "#c026d3", "gpu_mem_total_mb": "#111827",
          "gpu_mem_peak_mb": "#a21caf", "grad_norm": "#0f766e", "step_ms": "#b45309", "mfu": "#be123c"}
LABELS = {"loss": "train loss", "val_loss": "validation loss", "ce_loss": "cross-entropy (labels)",
          "kd_loss": "distillation (teacher)", "nll_loss": "NLL of the chosen replies", "ram_mb": "process RAM", "cpu_percent": "CPU %",
          "gpu_mem_allocated_mb": "GPU allocated", "gpu_mem_reserved_mb": "GPU reserved",
          "gpu_mem_total_mb": "GPU total", "gpu_mem_peak_mb": "GPU peak allocated", "val_bpb": "validation bits per byte"}
OOM_ADVICE = ("- a smaller **batch size** (raise gradient accumulation to keep the tokens per step)\n"
              "- turn on **gradient checkpointing**\n- a shorter **context length**\n"
              "- lower **precision** (bf16, or fp16 on older GPUs)")


# ---- shaping the rows ------------------------------------------------------------------------

def latest_attempt(rows: list[dict]) -> list[dict]:
    """Drop rows a resume re-did: after a crash at step 150 and a resume from the step-100 checkpoint,
    metrics.jsonl holds steps 101..150 twice; the second attempt is the one that counts."""
    out: dict[tuple, dict] = {}
    top = -math.inf  # the highest step kept: the scan below runs at a resume only, not at every row
    for row in rows:
        kind, step = row.get("kind"), row.get("step")
        if step is None:
            continue
        if kind == "train" and step <= top:
            # A step going back means a resume: forget everything at or after it.
            for key in [k for k in out if k[1] >= step]:
                del out[key]
            top = max((k[1] for k in out), default=-math.inf)
        out[(kind, step)] = row
        top = max(top, step)
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


def to_bits_per_byte(loss: Optional[float], bytes_per_token: Optional[float]) -> Optional[float]:
    """A loss in nats per token as bits per byte of text (the unit that compares vocabularies)."""
    if loss is None or not bytes_per_token:
        return None
    return loss / math.log(2) / bytes_per_token


def loss_traces(train: list[dict], evals: list[dict], x: str = "step", unit: str = "nats",
                bytes_per_token: Optional[float] = None) -> list[go.Scatter]:
    """Train loss (and the distillation parts when present) as lines, validation loss as markers;
    unit 'bpb' converts with the run's bytes per validation token (eval rows carry val_bpb)."""
    bpb = unit == "bpb" and bool(bytes_per_token)
    traces = []
    for key in ("loss", "ce_loss", "kd_loss", "nll_loss"):  # nll_loss: ORPO's likelihood term
        xs, ys = series(train, key, x)
        if xs:
            ys = [to_bits_per_byte(y, bytes_per_token) for y in ys] if bpb else ys
            traces.append(_line(xs, ys, key, dash=None if key == "loss" else "dot"))
    xs, ys = series(evals, "val_loss", x)
    if xs:
        ys = [to_bits_per_byte(y, bytes_per_token) for y in ys] if bpb else ys
        traces.append(_line(xs, ys, "val_loss", mode="lines+markers"))
    return traces


MEMORY_KEYS = ("gpu_mem_allocated_mb", "gpu_mem_reserved_mb", "gpu_mem_peak_mb", "gpu_mem_total_mb", "ram_mb")
# ranks 1, 2, ...: rank 0's colour, another dash ("dot" is the CPU % line's)
RANK_DASHES = ("dashdot", "longdash", "longdashdot", "dash")


def rank_memory_rows(train: list[dict]) -> list[dict]:
    """The rows that carry the other ranks' memory (a torchrun run gathers it every few steps)."""
    return [r for r in train if "ram_mb_rank1" in r]


def _ranks(rows: list[dict]) -> list[int]:
    """The ranks above 0 whose memory `rows` carry (keys like gpu_mem_reserved_mb_rank3)."""
    found = set()
    for row in rows:
        for key in row:
            head, sep, tail = key.rpartition("_rank")
            if sep and tail.isdigit() and head in MEMORY_KEYS:
                found.add(int(tail))
    return sorted(found)


def memory_traces(train: list[dict], x: str = "step", rank_rows: Optional[list[dict]] = None) -> list[go.Scatter]:
    """A line per memory figure: rank 0's under the plain keys (every step) and, under torchrun, one per
    other rank from `rank_rows` (default: those of `train`), thinned on their own so a stride over every
    step cannot skip all of them."""
    rank_rows = thin(rank_memory_rows(train) if rank_rows is None else rank_rows)
    ranks = _ranks(rank_rows)
    traces = []
    for key in MEMORY_KEYS:
        for rank in [0, *ranks]:
            rows, column = (train, key) if rank == 0 else (rank_rows, f"{key}_rank{rank}")
            xs, ys = series(rows, column, x)
            if not xs:
                continue
            if rank:
                dash = RANK_DASHES[(rank - 1) % len(RANK_DASHES)]
            else:
                dash = "dash" if key in ("gpu_mem_total_mb", "gpu_mem_peak_mb") else None
            name = f"{LABELS[key]}, rank {rank}" if ranks else None
            traces.append(_line(xs, ys, key, dash=dash, name=name))
    return traces


# Markers for what happened to the run; evaluations come from the eval rows themselves.
EVENT_STYLE = {  # event → (label, colour, marker symbol)
    "eval": ("evaluation", "#dc2626", "circle-open"), "best": ("new best", "#059669", "star"),
    "checkpoint": ("checkpoint", "#475569", "square"), "saved_now": ("saved now", "#db2777", "hexagram"),
    "paused": ("paused", "#d97706", "line-ns-open"),
    "continued": ("continued", "#2563eb", "triangle-right"), "stopped": ("stopped", "#111827", "x"),
    "resumed": ("resumed", "#7c3aed", "triangle-right-open"),
    "target_reached": ("target reached", "#0891b2", "diamond"),
}
MAX_EVENT_LINES = 60  # vertical lines per figure: beyond this they hide the curves


def event_name(row: dict) -> Optional[str]:
    """The marker a metrics row draws: a checkpoint someone asked for (Save checkpoint now; the worker marks it
    `asked`) is "saved_now", apart from the scheduled ones; evaluations come from eval rows."""
    kind = row.get("kind")
    if kind == "eval":
        return "eval"
    if kind != "event":
        return None
    return "saved_now" if row.get("event") == "checkpoint" and row.get("asked") else row.get("event")


def run_events(rows: list[dict]) -> list[dict]:
    """[{event, step, tokens}] from kind=event rows and eval rows, one per (event, step)."""
    seen: dict[tuple, dict] = {}
    for row in rows:
        name = event_name(row)
        if name in EVENT_STYLE and row.get("step") is not None:
            seen[(name, row["step"])] = {"event": name, "step": row["step"], "tokens": row.get("tokens")}
    return sorted(seen.values(), key=lambda e: e["step"])


def _event_x(event: dict, x: str) -> Optional[float]:
    return event["step"] if x == "step" else event.get("tokens")


def add_event_markers(fig: go.Figure, events: list[dict], x: str, n_rows: int, strip_row: int) -> None:
    """A strip of symbols (one per event kind, with a legend entry and hover) in `strip_row`, and a
    faint vertical line at every pause, continue, stop, resume and new best through every panel."""
    for name, (label, color, symbol) in EVENT_STYLE.items():
        mine = [e for e in events if e["event"] == name and _event_x(e, x) is not None]
        if mine:
            fig.add_trace(go.Scatter(x=[_event_x(e, x) for e in mine], y=[label] * len(mine), mode="markers",
                                     name=label, legendgroup="events", showlegend=False,
                                     marker=dict(color=color, symbol=symbol, size=10, line=dict(width=1.5, color=color)),
                                     hovertemplate=f"{label} at {x} %{{x:,}}<extra></extra>"),
                          row=strip_row, col=1)
    lines = [e for e in events if e["event"] not in ("eval", "checkpoint") and _event_x(e, x) is not None]
    for event in lines[-MAX_EVENT_LINES:]:
        color = EVENT_STYLE[event["event"]][1]
        for row in range(1, n_rows + 1):
            if row != strip_row:
                fig.add_vline(x=_event_x(event, x), line=dict(color=color, width=1, dash="dot"), opacity=0.6,
                              row=row, col=1, exclude_empty_subplots=False)


def _integer_steps(fig: go.Figure, xs: list, x: str) -> None:
    """Steps and tokens are whole numbers: no 0.5, 1.5 ticks while a run is young."""
    top = max(xs) if xs else 0
    if x == "step" and top <= 10:
        fig.update_xaxes(tick0=0, dtick=1)
    fig.update_xaxes(tickformat=",d")


def run_kind(train: list[dict]) -> str:
    """'pairs' (DPO/ORPO: preference rewards), 'grpo' (rewards a program computes) or 'text', from what the
    training rows carry: the metrics file says what the run is, whichever process wrote it."""
    for row in train:
        if "reward_margin" in row:
            return "pairs"
        if "reward_std" in row:
            return "grpo"
    return "text"


# Panels of the preference and reward modes, above the loss; the first of each is drawn taller.
KIND_PANELS = {
    "pairs": [("rewards", "Rewards: chosen vs rejected (β × log-ratio to the reference)"),
              ("margin", "Reward margin (chosen − rejected)"),
              ("accuracy", "Reward accuracy: pairs whose chosen reward is higher")],
    "grpo": [("reward", "Reward: mean and per function"), ("reward_std", "Reward spread within groups (std)"),
             ("kl", "KL to the reference"), ("completion_len", "Completion length (tokens)")],
    "text": [],
}
LOSS_TITLES = {"pairs": "Loss (preference pairs; validation: held-out pairs)",
               "grpo": "Loss: GRPO objective (train), worked answers' likelihood (validation)", "text": "Loss"}


def _panels(train: list[dict], kind: str = "text") -> list[tuple[str, str]]:
    """(key, title) of the panels this run has data for, top to bottom."""
    panels = [*KIND_PANELS[kind], ("loss", LOSS_TITLES[kind]), ("lr", "Learning rate"),
              ("grad_norm", "Gradient norm"), ("speed", "Speed: ms per step and tokens/s"),
              ("mfu", "Model FLOPs utilisation (%)"), ("memory", "Memory (MB) and CPU (%)"), ("events", "Events")]
    have = {k for row in train for k in row}
    always = {"loss", "memory", "events", "lr", *(k for k, _ in KIND_PANELS[kind])}
    return [(k, t) for k, t in panels if k in always or (k == "speed" and "tokens_per_sec" in have) or k in have]


HEIGHTS = {"loss": 3.0, "lr": 1.2, "grad_norm": 1.3, "speed": 1.4, "mfu": 1.2, "memory": 1.6, "events": 0.9,
           "rewards": 1.9, "margin": 1.2, "accuracy": 1.2, "reward": 2.0, "reward_std": 1.0, "kl": 1.0,
           "completion_len": 1.0}
LOSS_HEIGHT = {"pairs": 1.8, "grpo": 1.8, "text": HEIGHTS["loss"]}  # the rewards panels say more there
PAIR_COLORS = {"rewards_chosen": "#059669", "rewards_rejected": "#dc2626", "reward_margin": "#2563eb",
               "reward_accuracy": "#7c3aed", "choice_accuracy": "#d97706"}
PAIR_LABELS = {"rewards_chosen": "chosen", "rewards_rejected": "rejected", "reward_margin": "margin",
               "reward_accuracy": "reward accuracy", "choice_accuracy": "model prefers chosen (log-prob)"}
PAIR_SERIES = {"rewards": ("rewards_chosen", "rewards_rejected"), "margin": ("reward_margin",),
               "accuracy": ("reward_accuracy", "choice_accuracy")}
REWARD_COLORS = ("#0891b2", "#9333ea", "#d97706", "#be123c", "#4d7c0f", "#475569")


def pair_traces(panel: str, train: list[dict], evals: list[dict], x: str = "step") -> list[go.Scatter]:
    """A DPO/ORPO panel's lines: each figure per training step (a line) and on the held-out pairs (val_ rows,
    markers). The training accuracy of the log-probs is per batch noise beside the reward's: held-out only."""
    traces = []
    for key in PAIR_SERIES[panel]:
        color, label = PAIR_COLORS[key], PAIR_LABELS[key]
        xs, ys = series(train, key, x)
        if xs and key != "choice_accuracy":
            traces.append(go.Scatter(x=xs, y=ys, mode="lines", name=f"{label} (train)",
                                     line=dict(color=color, width=1.5), opacity=0.8))
        xs, ys = series(evals, f"val_{key}", x)
        if xs:
            traces.append(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"{label} (held-out)",
                                     line=dict(color=color, width=2, dash="dash"), marker=dict(size=7)))
    return traces


def reward_names(train: list[dict]) -> list[str]:
    """The reward functions a GRPO run logs (`reward/<name>` keys), in the order they first appear."""
    return list(dict.fromkeys(k.split("/", 1)[1] for row in train for k in row if k.startswith("reward/")))


def grpo_traces(panel: str, train: list[dict], x: str = "step") -> list[go.Scatter]:
    """A GRPO panel's lines: the mean reward (the weighted total) and each function's own, or one statistic."""
    if panel != "reward":
        xs, ys = series(train, panel, x)
        return [go.Scatter(x=xs, y=ys, mode="lines", name=panel.replace("_", " "), showlegend=False,
                           line=dict(color="#0f766e", width=2))] if xs else []
    xs, ys = series(train, "reward", x)
    traces = [go.Scatter(x=xs, y=ys, mode="lines", name="mean reward", line=dict(color="#111827", width=2.5))]
    for i, name in enumerate(reward_names(train)):
        xs, ys = series(train, f"reward/{name}", x)
        traces.append(go.Scatter(x=xs, y=ys, mode="lines", name=f"reward/{name}",
                                 line=dict(color=REWARD_COLORS[i % len(REWARD_COLORS)], width=1.5, dash="dot")))
    return traces


def training_figure(rows: list[dict], x: str = "step", log_y: bool = False, revision: str = "",
                    unit: str = "nats", bytes_per_token: Optional[float] = None) -> go.Figure:
    """The Train tab's live figure: loss, learning rate, gradient norm, speed (ms/step, tokens/s), MFU
    where the device's peak is known, memory and CPU, and the run's events, stacked on one shared x
    axis (step or tokens), so a memory spike or a pause lines up with the loss at the same step."""
    train, evals = split_rows(rows)
    if not train and not evals:
        return _empty("No metrics yet: the curves appear after the first training step.", height=420)
    rank_rows = rank_memory_rows(train)  # before thinning: they are every few steps, thinned apart
    train = thin(train)
    kind = run_kind(train)
    if kind == "pairs":  # a pair's loss is no per-token likelihood: no bits per byte, no perplexity
        unit, bytes_per_token = "nats", None
    panels = _panels(train, kind)
    index = {key: i + 1 for i, (key, _) in enumerate(panels)}
    heights = [LOSS_HEIGHT[kind] if k == "loss" else HEIGHTS[k] for k, _ in panels]
    total = sum(heights)
    secondary = {"speed", "memory"}
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.045 * 7 / max(7, len(panels)),
                        row_heights=[h / total for h in heights],
                        subplot_titles=[t for _, t in panels],
                        specs=[[{"secondary_y": k in secondary}] for k, _ in panels])
    bpb = unit == "bpb" and bool(bytes_per_token)
    for key, _ in KIND_PANELS[kind]:
        for trace in (pair_traces(key, train, evals, x) if kind == "pairs" else grpo_traces(key, train, x)):
            fig.add_trace(trace, row=index[key], col=1)
    if "accuracy" in index:
        fig.update_yaxes(range=[-0.03, 1.03], title_text="share", row=index["accuracy"], col=1)
    for trace in loss_traces(train, evals, x, unit, bytes_per_token):
        fig.add_trace(trace, row=index["loss"], col=1)
    loss_unit = "loss" if kind == "pairs" else "bits per byte" if bpb else "nats per token"
    fig.update_yaxes(title_text=loss_unit, type="log" if log_y else "linear", row=index["loss"], col=1)
    _add_series(fig, train, x, "lr", "learning rate", index["lr"])
    if "grad_norm" in index:
        _add_series(fig, train, x, "grad_norm", "gradient norm", index["grad_norm"])
    if "speed" in index:
        _add_series(fig, train, x, "step_ms", "ms per step", index["speed"])
        _add_series(fig, train, x, "tokens_per_sec", "tokens/s", index["speed"], secondary_y=True, dash="dot")
        fig.update_yaxes(title_text="ms/step", rangemode="tozero", row=index["speed"], col=1, secondary_y=False)
        fig.update_yaxes(title_text="tokens/s", rangemode="tozero", showgrid=False, row=index["speed"], col=1,
                         secondary_y=True)
    if "mfu" in index:
        xs, ys = series(train, "mfu", x)
        fig.add_trace(_line(xs, [100 * y for y in ys], "mfu", name="MFU %", showlegend=False), row=index["mfu"], col=1)
        fig.update_yaxes(rangemode="tozero", title_text="%", row=index["mfu"], col=1)
    for trace in memory_traces(train, x, rank_rows):
        fig.add_trace(trace, row=index["memory"], col=1, secondary_y=False)
    _add_series(fig, train, x, "cpu_percent", "CPU %", index["memory"], secondary_y=True, dash="dot", legend=True)
    fig.update_yaxes(title_text="MB", rangemode="tozero", row=index["memory"], col=1, secondary_y=False)
    fig.update_yaxes(title_text="CPU %", rangemode="tozero", showgrid=False, row=index["memory"], col=1,
                     secondary_y=True)
    add_event_markers(fig, run_events(rows), x, len(panels), index["events"])
    fig.update_yaxes(showgrid=False, row=index["events"], col=1)
    fig.update_xaxes(title_text="tokens" if x == "tokens" else "step", row=len(panels), col=1)
    _integer_steps(fig, [r[x] for r in train if r.get(x) is not None], x)
    _style(fig, height=int(150 * total) + 60, revision=revision)
    return fig


def _add_series(fig: go.Figure, train: list[dict], x: str, key: str, name: str, row: int,
                secondary_y: bool = False, dash: Optional[str] = None, legend: bool = False) -> None:
    xs, ys = series(train, key, x)
    if xs:
        fig.add_trace(_line(xs, ys, key, name=name, dash=dash, showlegend=legend), row=row, col=1,
                      secondary_y=secondary_y)


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
        per_eval = metric.startswith("val_")
        xs, ys = series(evals if per_eval else thin(train), metric, x)
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers" if per_eval else "lines",
                                     name=name))
    if not fig.data:
        return _empty("Pick runs with metrics to overlay their curves.")
    fig.update_xaxes(title_text=x)
    fig.update_yaxes(title_text=LABELS.get(metric, metric), type="log" if log_y else "linear")
    _style(fig, height=420)
    return fig


def length_figure(data: dict) -> go.Figure:
    """The Data tab's histogram: document lengths in tokens, as counted in power-of-two bins while tokenizing."""
    counts = (data.get("length_histogram") or {}).get("log2_bins") or []
    labels = [f"{2 ** k:,}–{2 ** (k + 1) - 1:,}" if k else "1" for k in range(len(counts))]
    fig = go.Figure(go.Bar(x=labels, y=counts, marker_color="#4f6bed"))
    fig.update_layout(height=280, template="plotly_white", xaxis_title="tokens", yaxis_title="documents")
    clear_title(fig, "Document length (tokens, incl. end-of-text)")
    return fig


def clear_title(fig: go.Figure, title: str) -> None:
    """A title in a band of its own above the plot, left-aligned: the plot's toolbar (top right, shown on hover)
    then covers neither it nor the plot."""
    fig.update_layout(title=dict(text=title, x=0, xanchor="left", xref="paper", y=1, yanchor="bottom", yref="paper",
                                 pad=dict(b=28), font=dict(size=14)),
                      margin=dict(l=50, r=10, t=64, b=50))
