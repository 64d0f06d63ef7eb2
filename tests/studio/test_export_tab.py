"""The Export tab with the real engine: each format's files listed with sizes and paths, and the usage
shown beside them actually runs (the Python snippets are executed here)."""

import re

import pytest

from studio.models import model_sources
from studio.style import mark
from studio.tabs import export as tab


@pytest.fixture(scope="module")
def run(copy_of_tiny_run, tmp_path_factory):
    """(runs_dir, name) of a copy of the session's tiny run with an int8 version beside it."""
    return copy_of_tiny_run(tmp_path_factory.mktemp("export-runs"), quantize=True)


def python_snippet(usage: str) -> str:
    return re.search(r"```python\n(.*?)```", usage, re.S).group(1)


def test_a_hugging_face_folder_that_transformers_loads_and_the_studio_lists(run, helper):
    pytest.importorskip("transformers")
    runs_dir, name = run
    text, rows, usage = tab.export_run(helper, runs_dir, str(runs_dir / name), "best", "hf", "f16")
    out = runs_dir / name / "export" / "hf"
    assert text.startswith(mark("ok")) and str(out) in text
    files = {row[0]: row for row in rows}
    assert {"config.json", "model.safetensors", "tokenizer.json", "export.json"} <= set(files)
    assert files["model.safetensors"][2] == str(out / "model.safetensors") and "MB" in files["model.safetensors"][1]
    scope: dict = {}
    exec(python_snippet(usage), scope)  # what the page tells the user to run
    assert scope["model"].config.vocab_size >= 256 and scope["tokenizer"]("Once upon a time")["input_ids"]
    assert f"`slm export {name} --format hf --runs-dir {runs_dir} --overwrite`" in usage
    assert (f"{name}/export/hf", str(out)) in model_sources(runs_dir)  # Chat, Compare and Evaluate offer it


def test_gguf_of_a_quantized_model_joins_the_runs_exports_with_an_ollama_modelfile(run, helper):
    runs_dir, name = run
    source = runs_dir / name / "quantized" / "int8"
    text, rows, usage = tab.export_run(helper, runs_dir, str(source), "best", "gguf", "q8_0")
    out = runs_dir / name / "export" / "int8-gguf-q8_0"
    assert text.startswith(mark("ok")) and [row[0] for row in rows][:2] == ["tiny-llama-q8_0.gguf", "Modelfile"]
    assert (out / "Modelfile").read_text().startswith("FROM ./tiny-llama-q8_0.gguf")
    assert f"ollama create {name}-quantized-int8 -f {out / 'Modelfile'}" in usage
    assert f"llama-cli -m {out / 'tiny-llama-q8_0.gguf'}" in usage
    assert f"--gguf-type q8_0 --out {out} --overwrite" in usage
    assert str(out) not in {path for _, path in model_sources(runs_dir)}  # GGUF is for llama.cpp, not for load_model


def test_onnx_runs_in_onnxruntime_as_the_page_says(run, helper):
    for module in ("onnxscript", "onnxruntime"):  # the exporter and the runtime (test extras)
        pytest.importorskip(module)
    runs_dir, name = run
    text, rows, usage = tab.export_run(helper, runs_dir, str(runs_dir / name), "latest", "onnx-graph", "f16")
    assert text.startswith(mark("ok")) and {"model.onnx", "tokenizer.json"} <= {row[0] for row in rows}
    scope: dict = {}
    exec(python_snippet(usage), scope)
    assert scope["logits"].shape[:2] == scope["ids"].shape and scope["logits"].shape[2] >= 256


def test_mistakes_are_messages(run, helper, tmp_path):
    runs_dir, name = run
    assert "Pick a model" in tab.export_run(helper, runs_dir, None, "best", "hf", "f16")[0]
    assert "Pick a format" in tab.export_run(helper, runs_dir, str(runs_dir / name), "best", "tflite", "f16")[0]
    text, rows, usage = tab.export_run(helper, runs_dir, str(tmp_path / "nothing"), "best", "hf", "f16")
    assert text.startswith(mark("error")) and "nothing" in text and rows == [] and usage == ""


def test_a_lora_run_exports_as_base_and_adapter_ggufs_that_llama_cpp_is_told_to_combine(run, helper):
    import os

    from gguf import GGUFReader

    from slm_core.config import load_recipe
    from slm_core.train.loop import train

    runs_dir, base = run
    quick = ["data.max_chars=400000", "model.context_length=64", "train.batch_size=4", "train.precision=fp32",
             "train.eval_batches=2", "train.sample_tokens=4", "train.warmup_steps=1"]
    config = load_recipe("quickstart-cpu", quick + ["train.mode=lora", f"train.init_from={runs_dir / base}",
                                                    "train.max_steps=2", "train.eval_interval=2",
                                                    "train.ckpt_interval=2", "lora.r=4"])
    os.environ.setdefault("SLM_CACHE_DIR", str(runs_dir / ".cache"))
    train(config, runs_dir / "tiny-lora", progress=False)
    text, rows, usage = tab.export_run(helper, runs_dir, str(runs_dir / "tiny-lora"), "best", "gguf-lora", "f32")
    out = runs_dir / "tiny-lora" / "export" / "gguf-lora-f32"
    assert text.startswith(mark("ok")), text
    names = [row[0] for row in rows]
    base_file = next(n for n in names if n.endswith(".gguf") and "-base-" in n)
    adapter_file = next(n for n in names if n.endswith(".gguf") and "-lora-" in n)
    adapter = GGUFReader(str(out / adapter_file))
    assert bytes(adapter.fields["general.type"].parts[-1]).decode() == "adapter"
    assert any(t.name.endswith(".lora_a") for t in adapter.tensors)
    assert f"llama-cli -m {out / base_file} --lora {out / adapter_file}" in usage
    assert "--format gguf-lora" in usage and "--gguf-type f32" in usage


def test_a_chosen_destination_gets_a_new_folder_and_nothing_in_it_is_replaced(run, helper, tmp_path):
    runs_dir, name = run
    chosen = tmp_path / "my models"
    chosen.mkdir()
    (chosen / "keep.txt").write_text("mine")
    text, rows, usage = tab.export_run(helper, runs_dir, str(runs_dir / name), "best", "hf", "f16",
                                       destination=str(chosen))
    out = chosen / f"{name}-hf"
    assert text.startswith(mark("ok")) and str(out) in text, text
    assert (chosen / "keep.txt").read_text() == "mine" and any(row[2].startswith(str(out)) for row in rows)
    assert f"--out '{out}'" in usage  # the same export from a shell
    again = tab.export_run(helper, runs_dir, str(runs_dir / name), "best", "hf", "f16", destination=str(chosen))
    assert again[0].startswith(mark("error")) and "already exists" in again[0]
