"""Pure functions from run files to the text the tabs show (progress, status, notes, samples, the log tail,
the runs table, config diffs), as HTML or Markdown."""

from __future__ import annotations

import html
import re
import time
from typing import Any, Optional

from slm_core.system import format_count
from studio.plots import OOM_ADVICE, OVERFIT_EVALS, split_rows
from studio.style import mark

STATE_COLORS = {"running": "#2563eb", "paused": "#d97706", "finished": "#059669", "stopped": "#6b7280",
                "failed": "#dc2626", "queued": "#6b7280", "starting": "#6b7280"}


def human_duration(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


# ---- the live run ----------------------------------------------------------------------------

NO_RUN_PROGRESS = '<div class="slm-progress" data-state="none"></div>'  # the status line says "No run yet"


def progress_html(status: dict, rows: list[dict], run: Optional[str] = "") -> str:
    """A progress bar with step, percentage, tokens/s and ETA, coloured by the run's state; `run` None: no run
    exists yet, so no bar (a "starting · step 0" bar would describe a run nobody started)."""
    if run is None:
        return NO_RUN_PROGRESS
    state = status.get("state") or "starting"
    step, total = int(status.get("step") or 0), status.get("max_steps") or 0
    train, _ = split_rows(rows)
    if train:
        step = max(step, int(train[-1]["step"]))
    fraction = min(step / total, 1.0) if total else 0.0
    last = train[-1] if train else {}
    parts = [f"step {step:,} / {total:,}" if total else f"step {step:,}", f"{fraction:.0%}"]
    if last.get("tokens_per_sec"):
        parts.append(f"{last['tokens_per_sec']:,.0f} tokens/s")
    if state == "running" and last.get("eta_s") is not None:
        parts.append(f"ETA {human_duration(last['eta_s'])}")
    elif last.get("elapsed_s") is not None:
        parts.append(f"trained {human_duration(last['elapsed_s'])}")
    color = STATE_COLORS.get(state, "#6b7280")
    return (f'<div class="slm-progress" data-state="{html.escape(state)}">'
            f'<div class="slm-progress-label"><b style="color:{color}">{html.escape(state)}</b> · '
            f'{html.escape(" · ".join(parts))}</div>'
            f'<div class="slm-progress-track"><div class="slm-progress-fill" '
            f'style="width:{fraction * 100:.1f}%;background:{color}"></div></div></div>')


def overfitting_note(rows: list[dict], status: Optional[dict] = None, window: int = OVERFIT_EVALS) -> str:
    """Markdown when validation loss rose at each of the last `window` evaluations while the training
    loss fell over the same stretch, pointing at the best checkpoint; '' otherwise."""
    train, evals = split_rows(rows)
    if len(evals) < window + 1:
        return ""
    recent = evals[-(window + 1):]
    rising = all(b["val_loss"] > a["val_loss"] for a, b in zip(recent, recent[1:]))
    start, end = recent[0]["step"], recent[-1]["step"]
    span = [r["loss"] for r in train if start <= r["step"] <= end and r.get("loss") is not None]
    if not rising or len(span) < 2:
        return ""
    head, tail = span[: max(1, len(span) // 4)], span[-max(1, len(span) // 4):]
    if sum(tail) / len(tail) >= sum(head) / len(head):
        return ""
    best = min(evals, key=lambda e: e["val_loss"])
    best_step = (status or {}).get("best_step") or best["step"]
    best_loss = (status or {}).get("best_val_loss") or best["val_loss"]
    return (f"{mark('warn')} **The run is overfitting**: validation loss rose at the last {window} evaluations "
            f"(step {start:,} → {end:,}) while training loss kept falling. The best checkpoint is from "
            f"step {best_step:,} (validation loss {best_loss:.4f}) and is kept as `checkpoints/best`; "
            f"chat, evaluation and export use it by default. More data, more dropout or fewer steps help.")


def is_oom(message: str) -> bool:
    text = (message or "").lower()
    return "out of memory" in text or "outofmemory" in text or "signal 9" in text


def failure_note(status: dict) -> str:
    """What failed and at which step; for out-of-memory, what to change."""
    if status.get("state") != "failed":
        return ""
    step = status.get("failed_step") or (status.get("step") or 0) + 1
    error = (status.get("error") or "the worker stopped without a message; see the log below").strip()
    text = f"{mark('error')} **The run failed at step {step:,}**: {error}"
    if is_oom(error):
        text += f"\n\nThe model did not fit in memory. Try one or more of:\n{OOM_ADVICE}"
    text += "\n\n**Resume** continues from the last checkpoint once the cause is fixed."
    return text


def sample_timeline_html(samples: list[dict], max_steps_shown: int = 12) -> str:
    """The fixed prompts as columns, one row per evaluation (newest first), so progress reads down a column."""
    if not samples:
        return '<p class="slm-muted">Samples appear at every evaluation.</p>'
    prompts = list(dict.fromkeys(s.get("prompt", "") for s in samples))
    by_step: dict[int, dict[str, str]] = {}
    for sample in samples:
        by_step.setdefault(int(sample.get("step", 0)), {})[sample.get("prompt", "")] = sample.get("text", "")
    steps = sorted(by_step, reverse=True)[:max_steps_shown]
    head = "".join(f"<th>{html.escape(p)!s}</th>" for p in prompts)
    body = []
    for step in steps:
        cells = "".join(f"<td><b>{html.escape(p)}</b>{sample_text(by_step[step].get(p, ''))}</td>" for p in prompts)
        body.append(f"<tr><td class='slm-step'>{step:,}</td>{cells}</tr>")
    return (f"<table class='slm-samples'><thead><tr><th>step</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def sample_steps(samples: list[dict]) -> list[int]:
    """The evaluation steps that have samples, newest first (the diff pickers' choices)."""
    return sorted({int(s.get("step", 0)) for s in samples}, reverse=True)


def sample_diff_html(samples: list[dict], a: Optional[int], b: Optional[int]) -> str:
    """Each prompt's sample at step a beside step b, word by word: removed words struck through, new ones
    highlighted, so what the model learned between two evaluations reads at a glance."""
    import difflib

    if a is None or b is None:
        return '<p class="slm-muted">Pick two steps to compare their samples.</p>'
    by_step: dict[int, dict[str, str]] = {}
    for sample in samples:
        by_step.setdefault(int(sample.get("step", 0)), {})[sample.get("prompt", "")] = sample.get("text", "")
    rows = []
    for prompt in dict.fromkeys(s.get("prompt", "") for s in samples):
        old, new = by_step.get(int(a), {}).get(prompt, "").split(), by_step.get(int(b), {}).get(prompt, "").split()
        parts = []
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
            if op in ("delete", "replace"):
                parts.append(f"<del>{sample_text(' '.join(old[i1:i2]))}</del>")
            if op in ("insert", "replace"):
                parts.append(f"<ins>{sample_text(' '.join(new[j1:j2]))}</ins>")
            if op == "equal":
                parts.append(sample_text(" ".join(old[i1:i2])))
        rows.append(f"<tr><td><b>{html.escape(prompt)}</b></td><td>{' '.join(parts)}</td></tr>")
    return (f"<table class='slm-samples slm-diff'><thead><tr><th>prompt</th><th>step {int(a):,} → step {int(b):,}"
            f"</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


INVALID_BYTES = re.compile("\ufffd+")


def sample_text(text: str) -> str:
    """A sample as HTML. An untrained model picks byte tokens at random, and bytes that are not valid UTF-8
    decode to U+FFFD; they show as a muted dot that says so on hover, not as replacement characters."""
    return INVALID_BYTES.sub(lambda m: f'<span class="slm-bytes" title="{len(m.group())} byte(s) that are not valid '
                                       f'UTF-8">·</span>', html.escape(text))


def log_tail(text: str, lines: int = 40) -> str:
    """The last lines of a log, with progress-bar redraws (carriage returns) collapsed to their final state."""
    out = []
    for line in text.replace("\r\n", "\n").split("\n"):
        out.append(line.rsplit("\r", 1)[-1] if "\r" in line else line)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out[-lines:])


def error_from_log(text: str) -> str:
    """The most telling line of a crashed worker's output: its `error:` line or the exception line."""
    lines = [line.strip() for line in log_tail(text, 200).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) and " " not in head:
            return line
    return lines[-1] if lines else ""


def status_markdown(name: str, status: dict) -> str:
    if not name:
        return "No run yet: pick a recipe and press **Start**."
    state = status.get("state") or "starting"
    best = status.get("best_val_loss")
    parts = [f"**{name}** — {state}"]
    if status.get("mode"):
        parts.append(f"mode {status['mode']}")
    if best is not None:
        parts.append(f"best validation loss {best:.4f} at step {status.get('best_step')}")
    if status.get("parent"):
        parts.append(f"from `{status['parent']}`")
    return " · ".join(parts)


# ---- the runs table and config diff ----------------------------------------------------------

RUN_COLUMNS = ["name", "status", "mode", "preset", "steps", "tokens", "best val loss", "duration", "parent", "started",
               "scores"]


def runs_table(summaries: list[dict]) -> list[list[Any]]:
    rows = []
    for r in summaries:
        best = r.get("best_val_loss")
        started = r.get("started_at")
        rows.append([
            r.get("name"), r.get("state"), r.get("mode") or "-", r.get("preset") or "-",
            f"{r.get('step') or 0:,} / {r.get('max_steps') or '?'}", format_count(r.get("tokens") or 0),
            f"{best:.4f}" if best is not None else "-", human_duration(r.get("duration_s")),
            r.get("parent") or "-",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "-",
            r.get("scores") or "-",  # the newest report card's task and judge scores
        ])
    return rows


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} → {'train.lr': 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


def config_diff(a: dict, b: dict) -> list[list[str]]:
    """[key, value in a, value in b] for every setting that differs, sorted by key."""
    fa, fb = flatten(a or {}), flatten(b or {})
    missing = object()
    rows = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key, missing), fb.get(key, missing)
        if va != vb:
            rows.append([key, "—" if va is missing else repr(va), "—" if vb is missing else repr(vb)])
    return rows
