"""Find a model: the Hub browser under the Model tab's real-model picker. It renders what slm_core.models.hub
finds (hits with family and parameters; one model's files, sizes and GGUF quantisations, and whether each fits
here; offline, the local cache) and downloads through the picker's own download, with its progress."""

from __future__ import annotations

from typing import Iterator, Optional

from slm_core.errors import SLMError
from slm_core.models import hub
from slm_core.system import format_bytes, format_count
from studio.model_picker import download
from studio.style import mark

ANY_FAMILY = "any family"


def _count(parameters: Optional[int]) -> str:
    return format_count(parameters) if parameters else "?"


def _fit(ok: Optional[bool]) -> str:
    return "—" if ok is None else (f"{mark('ok')} fits" if ok else f"{mark('error')} does not fit")


def results(hits: list[hub.HubModel], cached: list[hub.CachedRepo], offline: Optional[str]) -> str:
    """The search's answer as Markdown: the hits, or the offline message above the cache's models."""
    if offline:
        head = f"{mark('warn')} {offline}"
        if not cached:
            return f"{head}\n\nThe Hugging Face cache at `{hub.hub_cache_dir()}` holds no matching model."
        rows = "\n".join(f"| {r.repo_id} | {format_bytes(r.size_bytes)} | {r.files} | "
                         f"{', '.join(r.revisions) or '—'} | {'yes' if r.complete else 'no (' + (', '.join(r.gguf) or 'weights missing') + ')'} |"
                         for r in cached)
        return (f"{head}\n\n**In the Hugging Face cache** (`{hub.hub_cache_dir()}`)\n\n"
                f"| Model | On disk | Files | Revisions | Ready to load |\n|---|---|---|---|---|\n{rows}")
    if not hits:
        return f"{mark('info')} No text-generation model on the Hub matches; loosen the name or the filters."
    rows = "\n".join(f"| {m.repo_id}{' (gated)' if m.gated else ''} | {m.family or '?'} | {_count(m.parameters)} | "
                     f"{format_count(m.downloads) if m.downloads else '—'} | {m.likes if m.likes is not None else '—'} |"
                     for m in hits)
    return ("| Model | Family | Parameters | Downloads | Likes |\n|---|---|---|---|---|\n" + rows
            + "\n\n_Pick one below for its files, sizes and whether it fits here._")


def details(model: hub.HubModel) -> str:
    """One model's weights: all safetensors shards together and each GGUF quantisation, with size and fit."""
    head = (f"**{model.repo_id}** · {model.family or 'family unknown'} · {_count(model.parameters)} parameters"
            + (" · gated: accept its license on the Hub and log in first" if model.gated else ""))
    choices = hub.weight_choices(model)
    if not choices:
        return f"{head}\n\n{mark('warn')} No safetensors or GGUF weights in this repository: pick another."
    rows = "\n".join(f"| {what} | {format_bytes(size) if size is not None else '?'} | {_fit(hub.weights_fit(size))} |"
                     for what, size in choices)
    note = ("**Download** fetches the safetensors weights with config and tokenizer (into the Hugging Face cache); "
            "a GGUF file is used by naming it once it is on disk.") if choices[0][0] == "safetensors" else \
        "Only GGUF files here: download the one you want (e.g. `hf download REPO FILE`) and pick the file."
    return (f"{head}\n\n| Weights | Size | Loads here (weights in free memory) |\n|---|---|---|\n{rows}\n\n"
            f"_{note}_")


def choices(hits: list[hub.HubModel], cached: list[hub.CachedRepo]) -> list[tuple[str, str]]:
    return [(m.repo_id, m.repo_id) for m in hits] + [(f"{r.repo_id} (cache)", r.repo_id) for r in cached]


def search(query: str, family: str, gguf: bool, max_params_b: Optional[float]) -> tuple[str, list]:
    """(results Markdown, picker choices) for the form's values."""
    try:
        hits, cached, offline = hub.browse(query or "", family=None if family in (None, "", ANY_FAMILY) else family,
                                           gguf=bool(gguf), max_params_b=float(max_params_b) if max_params_b else None)
    except SLMError as error:
        return f"{mark('warn')} {error}", []
    return results(hits, cached, offline), choices(hits, cached)


def show(repo_id: Optional[str]) -> str:
    if not repo_id:
        return ""
    try:
        return details(hub.model_details(repo_id))
    except hub.HubOffline as offline:
        cached = [r for r in hub.cached_models() if r.repo_id == repo_id]
        return results([], cached, str(offline))
    except SLMError as error:
        return f"{mark('warn')} {error}"


def fetch(repo_id: Optional[str]) -> Iterator[tuple[bool, str]]:
    """(downloaded, line): the picker's own download and progress lines; downloaded is True on the last line once
    the model is in the cache (then the picker takes it and shows what it needs here)."""
    for line in download(repo_id):
        yield line.startswith(mark("ok")), line


def build(ctx, picker, picker_details, elem_id: str) -> None:
    """The browser, closed under `picker` (a real-model dropdown); a download lands in `picker_details`."""
    import gradio as gr

    from studio.tabs import PRIVATE, QUIET

    with gr.Accordion("Find a model on the Hugging Face Hub", open=False, elem_id=elem_id):
        with gr.Row():
            query = gr.Textbox(label="Name contains", placeholder="e.g. qwen2.5 instruct", scale=3,
                               elem_id=f"{elem_id}-query")
            family = gr.Dropdown([ANY_FAMILY, *hub.FAMILIES], value=ANY_FAMILY, label="Family", scale=1)
            size = gr.Number(value=None, label="At most (billion parameters)", minimum=0, scale=1)
            gguf = gr.Checkbox(label="GGUF files only", scale=1)
        go = gr.Button("Search", size="sm", elem_id=f"{elem_id}-search")
        found = gr.Markdown("", elem_id=f"{elem_id}-results", elem_classes="slm-estimate")
        pick = gr.Dropdown([], value=None, label="Hub model", elem_id=f"{elem_id}-pick",
                           info="its files, their sizes and whether they fit here")
        about = gr.Markdown("", elem_id=f"{elem_id}-details", elem_classes="slm-estimate")
        get = gr.Button("Download and use", size="sm", elem_id=f"{elem_id}-download")

    def run_search(*values):
        text, options = search(*values)
        return text, gr.update(choices=options, value=None)

    form = [query, family, gguf, size]
    gr.on([go.click, query.submit], run_search, form, [found, pick], **PRIVATE)
    pick.change(show, pick, about, **QUIET)
    def run_fetch(repo_id):
        for done, line in fetch(repo_id):
            yield (repo_id if done else gr.skip()), line

    get.click(run_fetch, pick, [picker, picker_details], concurrency_limit=2, concurrency_id="model-download",
              **PRIVATE)
