""""Shrink this model" in the Train tab's distill mode: the layer count (`distill.shrink_layers`) and the
teacher-against-student summary shown before Start."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from slm_core.errors import SLMError
from slm_core.system import format_count, format_mb
from studio.style import mark

KEY = "distill.shrink_layers"


def summary_markdown(info: dict) -> str:
    """shrink_summary's figures (plus the teacher's name and depth) as a teacher-vs-student table."""
    layers = info["layers"]
    rows = [("Layers", f"{info['teacher_layers']}", f"{len(layers)} (teacher's {', '.join(map(str, layers))})"),
            ("Parameters", format_count(info["teacher_params"]), format_count(info["student_params"])),
            ("Weights in bf16", format_mb(info["teacher_weights_mb"]), format_mb(info["student_weights_mb"]))]
    table = "| | Teacher | Student |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    return (f"Shrinking **{info['teacher']}**: expected speed-up **{info['expected_speedup']:.1f}×** per token "
            f"(compute scales with the blocks and the output layer).\n\n{table}\n\n_The student starts from the "
            f"teacher's own embeddings, output layer and the layers listed, then learns from the teacher; it "
            f"keeps the teacher's tokenizer._")


def summary(helper, teacher: Optional[str], layers, runs_dir: Path) -> str:
    """The page's summary for (teacher, layers); empty when shrinking is off."""
    if not layers or int(layers) <= 0:
        return ""
    if not (teacher or "").strip():
        return f"{mark('info')} Pick the teacher above: the student is built from its config."
    try:
        info = helper.call("shrink_summary", {"teacher": teacher.strip(), "layers": int(layers),
                                              "runs_dir": str(runs_dir)})
    except SLMError as error:
        return f"{mark('warn')} {error}"
    return summary_markdown(info)


def build(ctx) -> None:
    """The layer count and the summary, inside the distill group (after the teacher picker)."""
    import gradio as gr

    from studio.security import check_path
    from studio.tabs import FORM_TRIGGER, QUIET

    with gr.Accordion("Shrink this model: the student is the teacher with fewer layers", open=True):
        layers = gr.Number(0, label="Student layers", precision=0, minimum=0, elem_id="train-shrink-layers",
                           info="0 = off (distill into the recipe's model); e.g. 8 of Llama-3.2-1B's 16")
        text = gr.Markdown("", elem_id="train-shrink-summary", elem_classes="slm-estimate")
    ctx.fields[KEY] = layers
    teacher = ctx.fields["distill.teacher"]
    gr.on([teacher.change, layers.change],
          lambda t, n: summary(ctx.helper, check_path(ctx, t, "model"), n, ctx.runs_dir),
          [teacher, layers], text, trigger_mode=FORM_TRIGGER, **QUIET)
    ctx.shared["train.shrink_layers"] = layers
