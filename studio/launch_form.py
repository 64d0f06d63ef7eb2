"""The Train tab's "Processes" panel: how many processes, DDP or FSDP, which GPUs, and the multi-node flags,
read through `launch_from` so Start runs the command shown. Torch-free."""

from __future__ import annotations

from typing import Any, Sequence

import gradio as gr

from slm_core.errors import SLMError
from slm_core.system import format_mb
from studio.command import gpu_env, launch_args

LAUNCH_KEYS = ("nproc", "gpus", "nnodes", "node_rank", "rdzv_endpoint")
STRATEGIES = [("DDP: a full copy of the model per process", "ddp"),
              ("FSDP: weights, gradients and optimizer state split across processes", "fsdp")]


def build(ctx) -> dict[str, Any]:
    """The panel's components, keyed by LAUNCH_KEYS; train.strategy registers as a config field."""
    from slm_core.system import gpu_info

    gpus = gpu_info()
    c: dict[str, Any] = {}
    with gr.Group(elem_id="train-launch"):
        with gr.Row():
            c["nproc"] = gr.Number(1, label="Processes", precision=0, minimum=1, min_width=110, elem_id="train-nproc",
                                   info="one per GPU" if gpus else "on this CPU; they split its cores")
            ctx.fields["train.strategy"] = gr.Radio(STRATEGIES, value="ddp", label="Strategy (2+ processes)",
                                                    elem_id="train-strategy")
        c["gpus"] = gr.CheckboxGroup([(f"GPU {g['index']}: {g['name']} ({format_mb(g['free_mb'])} free)", g["index"])
                                      for g in gpus], value=[], label="GPUs (none ticked: all of them)",
                                     visible=bool(gpus), elem_id="train-gpus")
        gr.Markdown(gpu_note(gpus), elem_classes="slm-note", elem_id="train-gpu-note")
        with gr.Accordion("Multi-node (several machines)", open=False):
            with gr.Row():
                c["nnodes"] = gr.Number(1, label="Machines", precision=0, minimum=1, min_width=110,
                                        elem_id="train-nnodes")
                c["node_rank"] = gr.Number(0, label="This machine's rank", precision=0, minimum=0, min_width=110,
                                           elem_id="train-node-rank", info="0 on the machine at the endpoint")
                c["rdzv_endpoint"] = gr.Textbox("", label="Rendezvous endpoint", placeholder="HOST:PORT of machine 0",
                                                elem_id="train-rdzv")
            gr.Markdown("Run the command below on every machine, each with its own rank; the run folder must be "
                        "on storage all of them share.", elem_classes="slm-note")
    ctx.shared["launch.nproc"] = c["nproc"]  # the Model tab's memory estimate follows it
    return c


def gpu_note(gpus: Sequence[dict]) -> str:
    if gpus:
        return (f"{len(gpus)} CUDA GPU{'s' if len(gpus) > 1 else ''} found: processes use NCCL, one GPU each.")
    return ("No CUDA GPU found: the processes train on this CPU and talk over gloo (2+ processes still work, "
            "each with a share of the cores).")


def launch_from(values: Sequence[Any]) -> tuple[list[str], dict[str, str]]:
    """(launch arguments for `slm train`, environment) from the panel's values in LAUNCH_KEYS order."""
    panel = dict(zip(LAUNCH_KEYS, values))
    args = launch_args(panel["nproc"], panel["nnodes"], panel["node_rank"], panel["rdzv_endpoint"])
    env = gpu_env(panel["gpus"])
    picked = len(panel["gpus"] or [])
    nproc = int(panel["nproc"] or 1)
    if picked and nproc > picked:
        raise SLMError(f"{nproc} processes on {picked} GPU{'s' if picked > 1 else ''}: use one process per GPU "
                       f"(tick {nproc} GPUs, or set Processes to {picked})")
    return args, env
