"""Train tab: recipes, the training fields, the run controls and the live view, redrawn from the run
directory when a file changed."""

from __future__ import annotations

import time
from typing import Any, Optional

import gradio as gr

from slm_core.config import LORA_TARGETS, list_presets, preset_description
from slm_core.errors import SLMError
from slm_core.run import queue as runqueue
from slm_core.run import runs
from studio import launch_form, model_picker, shrink_form, watch
from studio.allow import AllowBox
from studio.command import (
    BASE_MODES,
    REWARD_CHECKS,
    REWARD_WEIGHTS,
    page_overrides,
    recipe_values,
    runs_dir_arg,
    shell_command,
    train_args,
)
from studio.desktop.browse import YAML, add_browse
from studio.plots import training_figure
from studio.rollouts import rollouts_html, split_samples
from studio.run_form import clone_name, fresh_run_name, queue_markdown, recipe_choices, run_settings, save_recipe
from studio.security import FIELD_KINDS, check_fields, check_path, check_value, page_error
from studio.tabs import FORM_TRIGGER, QUIET, message, run_names, set_initial
from studio.views import (
    failure_note,
    log_tail,
    overfitting_note,
    progress_html,
    sample_diff_html,
    sample_steps,
    sample_timeline_html,
    status_markdown,
)

TITLE = "Train"
DEFAULT_RECIPE = "quickstart-cpu"
REFRESH_S = 1.5
MODES = [("Pretrain from scratch", "pretrain"), ("Distill from a teacher", "distill"),
         ("LoRA fine-tune", "lora"), ("Full fine-tune", "finetune"), ("DPO (preference pairs)", "dpo"),
         ("ORPO (pairs, no reference)", "orpo"), ("GRPO (rewards a program computes)", "grpo")]
ADAPTER_MODES = ("lora", "dpo", "orpo", "grpo")  # where the LoRA settings apply (the latter three by default)
DPO_LOSSES = [("sigmoid (DPO)", "sigmoid"), ("ipo", "ipo"), ("hinge", "hinge")]
BETA_LABELS = {"dpo": "β (how far from the reference; lower: further)", "orpo": "λ (weight of the odds-ratio term)"}
SCHEDULES = ["cosine", "linear", "constant", "wsd"]  # wsd: warmup, stable, decay (the CPU recipes use it)
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]


def build(ctx) -> None:
    recipes = list_presets("recipes")
    recipe0 = DEFAULT_RECIPE if DEFAULT_RECIPE in recipes else recipes[0]
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=380):
            controls = _controls(ctx, recipes, recipe0)
        with gr.Column(scale=3):
            monitor = _monitor()
    with gr.Accordion("Log", open=False):
        monitor["log"] = gr.Code("", language="shell", lines=14, max_lines=14, label="log.txt (tail)",
                                 interactive=False, elem_id="train-log")
    _wire_recipe(ctx, controls)
    _wire_monitor(ctx, controls, monitor)
    # Start and the command box read every tab's fields: wired once all tabs exist.
    ctx.finalizers.append(lambda ctx: _wire_actions(ctx, controls, monitor))
    ctx.finalizers.append(lambda ctx: _wire_run_form(ctx, controls, monitor))
    _wire_sample_diff(ctx, monitor)
    _wire_queue(ctx, controls)
    ctx.shared["train.watch"] = monitor["watch"]


# ---- layout ----------------------------------------------------------------------------------

def _number(value, label, info=None, integer=True, **kw):
    return gr.Number(value, label=label, info=info, precision=0 if integer else None, min_width=110, **kw)


def _controls(ctx, recipes: list[str], recipe0: str) -> dict[str, Any]:
    c: dict[str, Any] = {}
    c["recipe"] = gr.Dropdown(recipes, value=recipe0, label="Recipe", info="one click prefills every field",
                              allow_custom_value=True)  # a recipe file picked with Browse… (desktop)
    c["recipe_browse"] = add_browse(ctx, c["recipe"], "file", YAML)
    c["about"] = gr.Markdown(preset_description("recipes", recipe0), elem_classes="slm-note")
    f = ctx.fields
    f["train.mode"] = gr.Radio(MODES, value="pretrain", label="Mode")
    with gr.Group(visible=False) as c["base_group"]:
        f["train.init_from"] = gr.Dropdown([], value="", allow_custom_value=True, label="Base model",
                                           info="a run (its best checkpoint), a checkpoint / Hugging Face folder, "
                                                "a cached model or a Hub id")
        add_browse(ctx, f["train.init_from"], "folder")  # desktop app only: the system's dialog
        panels = [model_picker.build_panel(ctx, f["train.init_from"], "train-base")]  # what it is, memory, Download
    with gr.Group(visible=False) as c["distill_group"]:
        f["distill.teacher"] = gr.Dropdown([], value="", allow_custom_value=True, label="Teacher",
                                           info="a run, a folder, a cached model or a Hub id; its tokenizer must "
                                                "match the student's")
        add_browse(ctx, f["distill.teacher"], "folder")
        panels.append(model_picker.build_panel(ctx, f["distill.teacher"], "train-teacher"))
        with gr.Row():
            f["distill.alpha"] = gr.Slider(0, 1, 0.5, step=0.05, label="α (weight of the teacher's soft targets)")
            f["distill.temperature"] = _number(2.0, "Temperature T", integer=False, minimum=0.1)
        shrink_form.build(ctx)  # "shrink this model": distill.shrink_layers
    with gr.Group(visible=False) as c["lora_group"]:
        with gr.Row():
            f["lora.r"] = _number(8, "LoRA rank r", minimum=1)
            f["lora.alpha"] = _number(16.0, "LoRA α", integer=False)
            f["lora.dropout"] = _number(0.05, "LoRA dropout", integer=False, minimum=0, maximum=0.9)
        f["lora.targets"] = gr.Dropdown(list(LORA_TARGETS), value="attention", allow_custom_value=True,
                                        label="LoRA targets", info="attention, mlp, all, or e.g. q_proj,v_proj")
    c["preference_group"] = _preference_fields(f)
    c["grpo_group"] = _grpo_fields(ctx, f)
    with gr.Accordion("Training settings", open=True):
        with gr.Row():
            f["train.max_steps"] = _number(600, "Steps", minimum=1)
            f["train.batch_size"] = _number(16, "Batch size", minimum=1)
            f["train.grad_accum"] = _number(1, "Grad accumulation", minimum=1)
        with gr.Row():
            f["train.lr"] = _number(0.002, "Learning rate", integer=False)
            f["train.warmup_steps"] = _number(30, "Warmup steps", minimum=0)
            f["train.schedule"] = gr.Dropdown(SCHEDULES, value="cosine", label="Schedule", min_width=110)
        with gr.Row():
            f["train.precision"] = gr.Dropdown(PRECISIONS, value="auto", label="Precision",
                                               min_width=110)
            f["train.compile"] = gr.Checkbox(False, label="torch.compile", min_width=110)
            f["train.grad_checkpointing"] = gr.Checkbox(False, label="Gradient checkpointing", min_width=110)
        with gr.Row():
            f["train.eval_interval"] = _number(100, "Evaluate every", minimum=1)
            f["train.ckpt_interval"] = _number(100, "Checkpoint every", minimum=1)
            f["train.seed"] = _number(1337, "Seed")
        c["launch"] = launch_form.build(ctx)  # processes, strategy, GPUs, multi-node
    c["name"] = gr.Textbox("", label="Run name", placeholder="blank: <recipe>-<date>-<time>")
    with gr.Row(elem_classes="slm-buttons"):
        c["start"] = gr.Button("Start", variant="primary", elem_id="train-start")
        c["pause"] = gr.Button("Pause", elem_id="train-pause")
        c["continue"] = gr.Button("Continue", elem_id="train-continue")
    with gr.Row(elem_classes="slm-buttons"):
        c["save"] = gr.Button("Save checkpoint now", elem_id="train-save")
        c["stop"] = gr.Button("Stop", variant="stop", elem_id="train-stop")
        c["resume"] = gr.Button("Resume", elem_id="train-resume")
    c["message"] = gr.Markdown("", elem_id="train-message")
    c["allow"] = AllowBox(ctx, "train-allow", parent=True)
    for panel in panels:  # a base or teacher folder outside the allowed ones is offered here too
        panel["allow"] = c["allow"]
    c["command"] = gr.Code("", language="shell", label="Copy as command", interactive=False, lines=2,
                           wrap_lines=True, buttons=["copy"], elem_id="train-command")
    with gr.Group():
        c["queue"] = gr.Markdown(queue_markdown([], None), elem_id="train-queue", elem_classes="slm-note")
        with gr.Row(elem_classes="slm-buttons"):
            c["queued"] = gr.Dropdown([], value=None, label="Queued run", scale=3, elem_id="train-queued")
            c["queue_up"] = gr.Button("Move up", size="sm", scale=1, elem_id="train-queue-up")
            c["queue_down"] = gr.Button("Move down", size="sm", scale=1, elem_id="train-queue-down")
            c["queue_cancel"] = gr.Button("Cancel it", size="sm", variant="stop", scale=1, elem_id="train-queue-cancel")
    with gr.Row(equal_height=True):
        c["my_recipe"] = gr.Textbox("", label="Save the form as my recipe", placeholder="a name, e.g. my-stories",
                                    scale=3, elem_id="train-my-recipe")
        c["save_recipe"] = gr.Button("Save as my recipe", scale=1, elem_id="train-save-recipe")
    return c


def _preference_fields(f: dict) -> Any:
    """DPO/ORPO: β (ORPO's λ), DPO's loss, and whether adapters train on a frozen base (its output the reference)."""
    with gr.Group(visible=False) as group:
        with gr.Row():
            f["preference.beta"] = _number(0.1, BETA_LABELS["dpo"], integer=False, minimum=0.001)
            f["preference.loss"] = gr.Dropdown(DPO_LOSSES, value="sigmoid", label="DPO loss", min_width=110)
        f["preference.lora"] = gr.Checkbox(True, label="LoRA adapters (the base with the adapter off is the "
                                                        "reference: no second copy in memory); off: full training")
        gr.Markdown("Data: `prompt` / `chosen` / `rejected` rows (JSONL, CSV, Parquet, a Hub set) or "
                    "`builtin:preferences` in the Data tab.", elem_classes="slm-note")
    return group


def _grpo_fields(ctx, f: dict) -> Any:
    """GRPO: prompts, group size, sampling, the KL pull and the rewards (checkboxes, their settings and weights)."""
    with gr.Group(visible=False) as group:
        f["grpo.prompts"] = gr.Textbox("builtin:arithmetic", label="Prompts",
                                       info="builtin:arithmetic, a JSONL/CSV/Parquet file with prompt + reference "
                                            "(or question + answer) columns, or a Hub dataset like openai/gsm8k:main")
        add_browse(ctx, f["grpo.prompts"], "file")
        with gr.Row():
            f["grpo.group_size"] = _number(8, "Group size (completions per prompt)", minimum=2)
            f["grpo.max_new_tokens"] = _number(32, "Max new tokens", minimum=1)
            f["grpo.temperature"] = _number(1.0, "Temperature", integer=False, minimum=0.01)
            f["grpo.kl_beta"] = _number(0.04, "KL β", integer=False, minimum=0)
        f["grpo.rewards"] = gr.CheckboxGroup(list(REWARD_CHECKS), value=["last_number"], label="Reward functions",
                                             elem_id="train-grpo-rewards",
                                             info="summed with the weights below; each is plotted as reward/<name>")
        with gr.Row():
            f["grpo.format_regex"] = gr.Textbox("", label="Format regex", placeholder=r"e.g. is \d+\.$", min_width=140)
            f["grpo.format_schema"] = gr.Textbox("", label="JSON schema", placeholder='{"type": "object"}', min_width=140)
        with gr.Row():
            f["grpo.length_target"] = _number(32, "Length: tokens before the penalty", minimum=1)
            f["grpo.custom_reward"] = gr.Textbox("", label="Custom reward (module:function)",
                                                 placeholder="my_rewards:score", min_width=160,
                                                 info="imported in the training process from its working folder")
        with gr.Row():
            for name in REWARD_WEIGHTS:
                f[f"grpo.weight.{name}"] = _number(1.0, f"weight: {name.replace('_', ' ')}", integer=False)
        f["grpo.lora"] = gr.Checkbox(True, label="LoRA adapters (the start with the adapter off is the KL "
                                                 "reference); off: full training with a frozen copy")
    return group


def _monitor() -> dict[str, Any]:
    m: dict[str, Any] = {}
    with gr.Row():
        m["watch"] = gr.Dropdown([], value=None, label="Run", allow_custom_value=True, scale=3,
                                 elem_id="train-watch")
        m["x_axis"] = gr.Radio(["step", "tokens"], value="step", label="x axis", scale=2)
        m["log_y"] = gr.Checkbox(False, label="log-scale loss", scale=1)
        m["unit"] = gr.Radio([("nats/token", "nats"), ("bits/byte", "bpb")], value="nats", label="loss in", scale=2,
                             elem_id="train-unit")
    with gr.Row(elem_classes="slm-buttons"):
        m["load"] = gr.Button("Load its settings", size="sm", elem_id="train-load")
        m["clone"] = gr.Button("Clone it", size="sm", elem_id="train-clone")
    m["progress"] = gr.HTML(progress_html({}, [], run=None), elem_id="train-progress")
    m["status"] = gr.Markdown(status_markdown("", {}), elem_id="train-status")
    m["notes"] = gr.Markdown("", elem_classes="slm-note", elem_id="train-notes")
    m["plot"] = gr.Plot(training_figure([]), label="Training curves", show_label=False, elem_id="train-plot")
    with gr.Accordion("Samples (the same prompts at every evaluation)", open=True):
        m["samples"] = gr.HTML(sample_timeline_html([]), elem_id="train-samples")
        with gr.Row():
            m["diff_a"] = gr.Dropdown([], value=None, label="Compare the samples of step", scale=1,
                                      elem_id="train-diff-a")
            m["diff_b"] = gr.Dropdown([], value=None, label="with step", scale=1, elem_id="train-diff-b")
        m["diff"] = gr.HTML("", elem_id="train-diff")
    m["sig"] = gr.State(None)
    m["timer"] = gr.Timer(REFRESH_S)
    return m


# ---- recipe, mode and the command box ---------------------------------------------------------

def _wire_recipe(ctx, c: dict) -> None:
    keys, fields = list(ctx.fields), list(ctx.fields.values())
    preset = ctx.shared.get("model.preset")

    def prefill(recipe: str):
        try:  # a typed or browsed recipe file, or a name that is no recipe: said in the page
            model_preset, values = recipe_values(check_recipe(ctx, recipe), keys)
        except SLMError as error:
            raise gr.Error(str(error), print_exception=False) from None
        # A fresh name too: the previous run's name would make the command (and Start) name a run that exists.
        return [preset_description("recipes", recipe), model_preset or gr.update(), *values,
                fresh_run_name(ctx.runs_dir, recipe)]

    outputs = [c["about"], preset if preset is not None else gr.State(), *fields, c["name"]]
    c["recipe"].input(prefill, c["recipe"], outputs, **QUIET)
    c["recipe_browse"].chosen.then(prefill, c["recipe"], outputs, **QUIET)  # Browse… writes it: no input event
    # The page opens with the default recipe's values (also what API clients get as defaults).
    model_preset, values = recipe_values(c["recipe"].value, keys)
    for component, value in zip(fields, values):
        set_initial(component, value)
    if preset is not None and model_preset:
        set_initial(preset, model_preset)
    groups = [c["base_group"], c["distill_group"], c["lora_group"], c["preference_group"], c["grpo_group"],
              ctx.fields["preference.loss"], ctx.fields["preference.beta"]]
    ctx.fields["train.mode"].change(
        lambda mode: [gr.update(visible=mode in BASE_MODES), gr.update(visible=mode == "distill"),
                      gr.update(visible=mode in ADAPTER_MODES), gr.update(visible=mode in ("dpo", "orpo")),
                      gr.update(visible=mode == "grpo"), gr.update(visible=mode == "dpo"),
                      gr.update(label=BETA_LABELS.get(mode, BETA_LABELS["dpo"]))],
        ctx.fields["train.mode"], groups, **QUIET)
    pickers = [ctx.fields["train.init_from"], ctx.fields["distill.teacher"]]

    def refresh_pickers():
        from studio.model_picker import hub_choices  # Hugging Face cache models, by Hub id

        names = [str(ctx.runs_dir / n) for n in run_names(ctx.runs_dir, with_checkpoint=True)]
        runs = [(p.rsplit("/", 1)[-1], p) for p in names]
        return [gr.update(choices=[("", "")] + runs + hub_choices())] * 2

    ctx.fields["train.mode"].change(refresh_pickers, None, pickers, **QUIET)


def check_recipe(ctx, recipe: str) -> str:
    """A recipe file (not a preset name) is read only where the page may read (SLMError otherwise)."""
    if str(recipe or "").endswith((".yaml", ".yml")):
        check_value(ctx.paths, "path", recipe)
    return recipe


# ---- start, the control buttons and the command box -------------------------------------------

def _page_inputs(ctx, c: dict) -> tuple[list, Any]:
    """Inputs [recipe, name, model preset, *fields] and a function turning them into (recipe, name, overrides)."""
    keys = list(ctx.fields)
    preset = ctx.shared.get("model.preset") or gr.State(None)
    inputs = [c["recipe"], c["name"], preset, *ctx.fields.values()]

    def parse(recipe: str, name: str, model_preset: Optional[str], *values):
        overrides = page_overrides(check_recipe(ctx, recipe), model_preset, dict(zip(keys, values)))
        return recipe, (name or "").strip() or None, overrides

    return inputs, parse


def _wire_actions(ctx, c: dict, m: dict) -> None:
    page, parse = _page_inputs(ctx, c)
    inputs = page + [c["launch"][key] for key in launch_form.LAUNCH_KEYS]  # the Processes panel last

    def command(*args):
        try:
            recipe, name, overrides = parse(*args[:len(page)])
            launch, env = launch_form.launch_from(args[len(page):])
        except SLMError as error:
            return f"# fix this first: {error}"
        return shell_command(train_args(recipe, overrides, name, runs_dir_arg(ctx.runs_dir), launch), env)

    gr.on([x.change for x in inputs], command, inputs, c["command"], trigger_mode=FORM_TRIGGER, **QUIET)
    ctx.on_load.append(dict(fn=command, inputs=inputs, outputs=c["command"]))

    def start(*args):
        check_fields(ctx, dict(zip(ctx.fields, args[3:])))  # inputs: recipe, name, model preset, *fields
        page_error(check_recipe, ctx, args[0])
        try:
            recipe, name, overrides = parse(*args[:len(page)])
            launch, env = launch_form.launch_from(args[len(page):])
            busy = ctx.runner.active()
            if busy and (launch or env):
                raise SLMError(f"run '{busy}' is still running, and the queue starts runs as one process on the "
                               f"default devices: stop '{busy}' first, or set Processes to 1 to queue this run")
            if busy:  # the button reads "Queue" meanwhile
                entry = ctx.runner.enqueue(recipe, overrides, name)
                return (message("ok", f"Queued **{entry['name']}**: it starts when **{busy}** and the runs queued "
                                      f"before it have ended."), gr.update(), None,
                        *_queue_outputs(ctx, busy)[1:],  # the queue box at once, not at the next refresh
                        next_name(name, recipe))
            run = ctx.runner.start(recipe, overrides, name, launch, env)
        except SLMError as error:
            return message("error", str(error)), gr.update(), gr.update(), gr.skip(), gr.skip(), gr.skip()
        return (message("ok", f"Started **{run}** in a background worker."),
                gr.update(choices=run_names(ctx.runs_dir), value=run), None, gr.skip(), gr.skip(),
                next_name(name, recipe))

    def next_name(used: Optional[str], recipe: str):
        """The name box once its run started or queued: a typed name is taken now, so a fresh one replaces it
        (the command box must not name a run that exists); a blank box stays blank (a new name each Start)."""
        return fresh_run_name(ctx.runs_dir, recipe) if used else gr.skip()

    started = c["start"].click(start, inputs, [c["message"], m["watch"], m["sig"], c["queue"], c["queued"], c["name"]],
                               api_name="train_start", concurrency_limit=1, concurrency_id="train-control")
    c["allow"].after(started, [(kind, ctx.fields[key]) for key, kind in FIELD_KINDS.items() if key in ctx.fields])
    for what in ("pause", "continue", "save", "stop", "resume"):
        c[what].click(lambda watched, what=what: control(ctx.runner, what, check_path(ctx, watched, "run")), m["watch"],
                      [c["message"], m["sig"]], api_name=f"train_{what}", concurrency_limit=1,
                      concurrency_id="train-save" if what == "save" else "train-control")  # save waits for its checkpoint


def control(runner, what: str, name: Optional[str]) -> tuple[str, None]:
    """One of the control buttons on the watched run; returns (message, reset refresh signature)."""
    if not name:
        return message("error", "No run selected."), None
    try:
        if what == "resume":
            runner.resume(name)
            return message("ok", f"Resuming **{name}** from its last checkpoint."), None
        run_dir = runner.root / name
        if what == "stop" and (run_dir / "control" / "stop").exists():
            runner.terminate(name)  # a second Stop while the first is pending: signal the worker too
        asked = time.time()
        runner.request(name, "resume" if what == "continue" else what)
    except SLMError as error:
        return message("error", str(error)), None
    if what == "save":
        step = wait_for_checkpoint(run_dir, asked, SAVE_WAIT_S)
        if step is not None:
            return message("ok", f"Saved a checkpoint of **{name}** at step {step:,} (`checkpoints/latest`)."), None
    done = {"pause": "Pausing: the worker holds the model and optimizer in memory until Continue.",
            "continue": "Continuing.", "save": "Saving a checkpoint at the next step.",
            "stop": "Stopping: the worker writes a checkpoint and exits (Resume continues from it)."}
    return message("info", done[what]), None


SAVE_WAIT_S = 30.0  # a step of a large model on a CPU; after that the message says the save is still coming


def wait_for_checkpoint(run_dir, since: float, timeout: float) -> Optional[int]:
    """The step of the first checkpoint the worker reports (a kind=event row) after `since`; None on timeout."""
    deadline = time.time() + timeout
    while True:
        for row in reversed(watch.metrics(run_dir)):
            if row.get("kind") == "event" and row.get("event") == "checkpoint" and row.get("time", 0) >= since:
                return int(row.get("step") or 0)
        if time.time() > deadline or runs.read_status(run_dir).get("state") in runs.TERMINAL_STATES:
            return None
        time.sleep(0.25)


# ---- the live view ---------------------------------------------------------------------------

BUTTON_STATES = {"pause": ("running",), "continue": ("paused",), "save": ("running", "paused"),
                 "stop": ("running", "paused"), "resume": ("stopped", "failed")}


def default_run(ctx) -> Optional[str]:
    """The run a fresh page shows: the live one, else the one this Studio started, else the newest."""
    live = ctx.runner.active()
    if live:
        return live
    if ctx.runner.current:
        return ctx.runner.current
    names = run_names(ctx.runs_dir)
    return names[0] if names else None


def refresh(ctx, watched: Optional[str], x_axis: str, log_y: bool, last: Optional[dict], unit: str = "nats") -> list:
    """The live view's outputs; each is gr.skip() unless a file it is drawn from changed since `last`
    (the signature this page got last time), so a page watching an idle run costs a few stat() calls.
    Order: plot, progress, status, notes, samples, log, run picker, *BUTTON_STATES, start, queue,
    queued-run picker, message, signature."""
    ctx.runner.poll()  # reaps a finished worker; records a silent death as a failed run
    name = watched or default_run(ctx)
    live = ctx.runner.live_name()
    if live and live != name and (not name or runs.read_status(ctx.runs_dir / name).get("state")
                                  not in ("running", "paused")):
        name = live  # a run started from another tab or by the queue: follow it
    run_dir = ctx.runs_dir / name if name else None
    status = watch.status(run_dir) if run_dir else {}
    sig = {"view": (name, x_axis, bool(log_y), unit), "state": status.get("state"),
           **dict(zip(("status", "metrics", "samples", "log"), watch.signature(run_dir) or (None,) * 4)),
           "busy": ctx.runner.active(), "queue": runqueue.signature(ctx.runs_dir)}
    last = last or {}

    def changed(*keys: str) -> bool:
        return last.get("view") != sig["view"] or any(last.get(k) != sig[k] for k in keys)

    n_outputs = 7 + len(BUTTON_STATES) + 5
    if not changed("state", "status", "metrics", "samples", "log", "busy", "queue"):
        return [gr.skip()] * n_outputs
    skip = gr.skip()
    rows = watch.metrics(run_dir) if run_dir and changed("metrics", "status", "state") else []
    state_changed = changed("metrics", "status", "state")
    figure = training_figure(rows, x=x_axis, log_y=bool(log_y), revision=name or "", unit=unit,
                             bytes_per_token=status.get("bytes_per_token")) if changed("metrics") else skip
    # A notice about the watched run ("Resuming ...") goes once that run has ended.
    ended = (last.get("view") == sig["view"] and last.get("state") in ("running", "paused")
             and sig["state"] in runs.TERMINAL_STATES)
    return [
        figure,
        progress_html(status, rows, run=name) if state_changed else skip,
        status_markdown(name or "", status) if changed("status", "state") else skip,
        (failure_note(status) or overfitting_note(rows, status)) if state_changed else skip,
        samples_html(watch.samples(run_dir) if run_dir else []) if changed("samples") else skip,
        (log_tail(watch.log_text(run_dir)) if run_dir else "") if changed("log") else skip,
        gr.update(value=name, choices=run_names(ctx.runs_dir)) if name != watched else skip,
        *[gr.update(interactive=status.get("state") in states) if changed("state") else skip
          for states in BUTTON_STATES.values()],
        *(_queue_outputs(ctx, sig["busy"]) if changed("busy", "queue") else [skip] * 3),
        "" if ended else skip,
        sig,
    ]


def samples_html(samples: list[dict]) -> str:
    """The fixed prompts at every evaluation, then (GRPO) the latest sampled completions with their rewards."""
    evals, rollouts = split_samples(samples)
    return sample_timeline_html(evals) + rollouts_html(rollouts)


def _queue_outputs(ctx, busy: Optional[str]) -> list:
    """Start's label ("Queue" while a run holds the slot), the queue's text and the queued-run picker."""
    entries = runqueue.entries(ctx.runs_dir)
    names = [e["name"] for e in entries]
    return [gr.update(value="Queue" if busy else "Start"), queue_markdown(entries, busy),
            gr.update(choices=names, value=names[0] if names else None)]


def _wire_monitor(ctx, c: dict, m: dict) -> None:
    outputs = [m["plot"], m["progress"], m["status"], m["notes"], m["samples"], m["log"], m["watch"],
               *[c[b] for b in BUTTON_STATES], c["start"], c["queue"], c["queued"], c["message"], m["sig"]]
    inputs = [m["watch"], m["x_axis"], m["log_y"], m["sig"], m["unit"]]
    m["timer"].tick(lambda w, *a: refresh(ctx, check_path(ctx, w, "run"), *a), inputs, outputs,
                    api_name="train_refresh",
                    show_progress="hidden", concurrency_limit=None)
    redraw = [m["watch"], m["x_axis"], m["log_y"], m["unit"]]
    gr.on([x.input for x in redraw],
          lambda w, x, l, u: refresh(ctx, check_path(ctx, w, "run"), x, l, None, u), redraw, outputs, **QUIET)

    def on_load():
        names = run_names(ctx.runs_dir)
        return gr.update(choices=names, value=default_run(ctx)), None

    ctx.on_load.append(dict(fn=on_load, outputs=[m["watch"], m["sig"]]))


# ---- the queue -----------------------------------------------------------------------------

def _wire_queue(ctx, c: dict) -> None:
    def act(what: str, name: Optional[str]):
        try:
            if not name:
                raise SLMError("pick a queued run first")
            if what == "cancel":
                runqueue.remove(ctx.runs_dir, name)
                text = message("ok", f"Took **{name}** off the queue.")
            else:
                names = [e["name"] for e in runqueue.entries(ctx.runs_dir)]
                at = names.index(name) if name in names else 0
                runqueue.move(ctx.runs_dir, name, at - 1 if what == "up" else at + 1)
                text = ""
        except SLMError as error:
            text = message("error", str(error))
        entries = runqueue.entries(ctx.runs_dir)
        names = [e["name"] for e in entries]
        return (queue_markdown(entries, ctx.runner.active()), gr.update(choices=names, value=name if name in names
                                                                           else (names[0] if names else None)), text)

    for what, button in (("up", "queue_up"), ("down", "queue_down"), ("cancel", "queue_cancel")):
        c[button].click(lambda name, what=what: act(what, name), c["queued"], [c["queue"], c["queued"], c["message"]],
                        api_name=f"queue_{what}", concurrency_limit=1, concurrency_id="train-control")


# ---- the form and the watched run: follow it, load its settings, clone it, save as my recipe ------------

def _wire_run_form(ctx, c: dict, m: dict) -> None:
    keys, fields = list(ctx.fields), list(ctx.fields.values())
    preset = ctx.shared.get("model.preset") or gr.State(None)
    form = [c["recipe"], c["about"], preset, *fields]

    def load(name: Optional[str], quiet: bool = False) -> list:
        try:
            if not name:
                raise SLMError("no run is shown: pick one in the Run box")
            recipe, model_preset, values = run_settings(ctx.runs_dir, check_path(ctx, name, "run"), keys)
        except SLMError as error:
            return [gr.skip()] * len(form) + [gr.skip() if quiet else message("error", str(error))]
        about = (f"The settings of run **{name}** (its `config.yaml`): Start trains a new run with them; "
                 f"edit any field first.")
        return [gr.update(choices=recipe_choices(recipe), value=recipe), about, model_preset or gr.skip(), *values,
                gr.skip() if quiet else message("info", f"The form now holds **{name}**'s settings.")]

    def clone(name: Optional[str]) -> list:
        out = load(name)
        if out[0] == gr.skip():
            return out + [gr.skip()]
        new = clone_name(ctx.runs_dir, name)
        out[-1] = message("info", f"Cloned **{name}** as **{new}**: edit the settings, then Start.")
        return out + [new]

    m["load"].click(load, m["watch"], form + [c["message"]], api_name="train_load_settings")
    m["clone"].click(clone, m["watch"], form + [c["message"], c["name"]], api_name="train_clone")
    # The form follows the run the page shows: picked by hand, or the one a fresh page opens on.
    m["watch"].input(lambda name: load(name, quiet=True), m["watch"], form + [c["message"]], **QUIET)
    ctx.on_load.append(dict(fn=lambda: load(default_run(ctx), quiet=True), outputs=form + [c["message"]]))

    def save_mine(name: str, recipe: str, model_preset: Optional[str], *values):
        try:
            path = save_recipe(name, recipe, model_preset, dict(zip(keys, values)))
        except SLMError as error:
            return message("error", str(error)), gr.skip()
        return (message("ok", f"Saved as your recipe **{path.stem}** (`{path}`); `slm presets` lists it and "
                              f"`slm train --preset {path.stem}` runs it."), saved_recipe_update(recipe, path.stem))

    c["save_recipe"].click(save_mine, [c["my_recipe"], c["recipe"], preset, *fields], [c["message"], c["recipe"]],
                           api_name="train_save_recipe")


def saved_recipe_update(previous: Optional[str], saved: str) -> Any:
    """The Recipe box after "Save as my recipe": the saved recipe picked, among choices that still hold the previous
    value (a run's settings), so that an event the page sent with that value meanwhile (a field's change, committed
    by the same click) still passes Gradio's check of a dropdown's value against the choices it holds now."""
    return gr.update(choices=recipe_choices(previous), value=saved)


def _wire_sample_diff(ctx, m: dict) -> None:
    """Two steps' samples side by side, word by word; the pickers list the watched run's evaluation steps."""
    def evaluation_samples(name: Optional[str]) -> list[dict]:  # not GRPO's sampled completions
        return split_samples(watch.samples(ctx.runs_dir / check_path(ctx, name, "run")))[0] if name else []

    def diff(name: Optional[str], a, b):
        return sample_diff_html(evaluation_samples(name), a, b)

    def steps(name: Optional[str]):
        samples = evaluation_samples(name)
        found = sample_steps(samples)
        a, b = (found[-1], found[0]) if len(found) > 1 else (None, None)  # first against latest
        return gr.update(choices=found, value=a), gr.update(choices=found, value=b), sample_diff_html(samples, a, b)

    gr.on([m["diff_a"].input, m["diff_b"].input], diff, [m["watch"], m["diff_a"], m["diff_b"]], m["diff"], **QUIET)
    gr.on([m["watch"].change, m["samples"].change], steps, m["watch"], [m["diff_a"], m["diff_b"], m["diff"]], **QUIET)
