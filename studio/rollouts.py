"""GRPO's sampled completions in the Train tab's sample table: each row of samples.jsonl that carries a reward
(step, prompt, completion, reference, total reward, each function's reward), newest step first, apart from the
fixed prompts sampled at every evaluation."""

from __future__ import annotations

import html

from studio.views import sample_text

MAX_ROLLOUT_STEPS = 6  # steps shown; each holds grpo.sample_rows completions


def split_samples(samples: list[dict]) -> tuple[list[dict], list[dict]]:
    """(evaluation samples: the same prompts at every evaluation, GRPO completions: rows with a reward)."""
    evals, rollouts = [], []
    for sample in samples:
        (rollouts if "reward" in sample else evals).append(sample)
    return evals, rollouts


def _number(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else html.escape(str(value))


def rollouts_html(rollouts: list[dict], max_steps: int = MAX_ROLLOUT_STEPS) -> str:
    """The latest steps' sampled completions with their rewards, one row each, newest step first."""
    if not rollouts:
        return ""
    steps = sorted({int(r.get("step", 0)) for r in rollouts}, reverse=True)[:max_steps]
    names = list(dict.fromkeys(name for r in rollouts for name in (r.get("rewards") or {})))
    head = "".join(f"<th>{html.escape(name)}</th>" for name in names)
    body = []
    for step in steps:
        for row in (r for r in rollouts if int(r.get("step", 0)) == step):
            each = row.get("rewards") or {}
            cells = "".join(f"<td>{_number(each[name]) if name in each else ''}</td>" for name in names)
            reference = row.get("reference")
            body.append(f"<tr><td class='slm-step'>{step:,}</td><td>{sample_text(row.get('prompt', ''))}</td>"
                        f"<td>{sample_text(row.get('text', ''))}</td>"
                        f"<td>{'' if reference is None else html.escape(str(reference))}</td>"
                        f"<td><b>{_number(row.get('reward'))}</b></td>{cells}</tr>")
    return (f"<p><b>Sampled completions and their rewards</b> (the latest {len(steps)} steps)</p>"
            f"<table class='slm-samples slm-rollouts'><thead><tr><th>step</th><th>prompt</th><th>completion</th>"
            f"<th>reference</th><th>reward</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
