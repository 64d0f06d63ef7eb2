"""Export to other runtimes (a Hugging Face folder, GGUF, ONNX): `export_model` turns any loaded model into a
plain float Transformer and writes the format into place atomically."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

from slm_core.errors import SLMError
from slm_core.infer.onnx import build_genai_folder
from slm_core.models.hf import save_hf_folder
from slm_core.models.quantized import (
    dequantize_model,
    is_quantized,
    plain_transformer,
    replace_dir,
)
from slm_core.post.export_gguf import ollama_modelfile, safe_name, write_gguf
from slm_core.post.export_gguf_lora import write_lora_bundle
from slm_core.post.report_card import card_of_source, write_model_card
from slm_core.run.lineage import record_derived
from slm_core.run.lineage_hub import export_lineage, gguf_base_models

FORMATS = ("hf", "gguf", "gguf-lora", "onnx", "onnx-graph")  # onnx: onnxruntime-genai folder; onnx-graph: plain
# logits graph; gguf-lora: a LoRA run as its base GGUF + llama.cpp LoRA adapter GGUF (export_gguf_lora.py)
INFO_FILE = "export.json"


def plain_float_model(model: torch.nn.Module, keep_dtype: bool = False) -> torch.nn.Module:
    """LoRA merged, quantized weights dequantized (the rounded values), fp32 (keep_dtype: as loaded), CPU, eval."""
    model = plain_transformer(model)  # merges a LoRA adapter
    if is_quantized(model):
        model = dequantize_model(model)
    return (model.to("cpu") if keep_dtype else model.to("cpu", torch.float32)).eval()


def export_onnx(model: torch.nn.Module, path: str | Path) -> Path:
    """input_ids (batch, sequence) int64 → logits (batch, sequence, vocab), both axes dynamic."""
    config = model.config
    try:
        import onnx  # noqa: F401  (the exporter needs both)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise SLMError(f"ONNX export needs the onnx and onnxscript packages ({exc}): pip install onnx onnxscript") from exc
    path = Path(path)
    example = torch.zeros(2, min(8, config.context_length), dtype=torch.long)  # >1 on both axes: stays symbolic
    shapes = {"input_ids": {0: torch.export.Dim("batch", min=1, max=4096),
                            1: torch.export.Dim("sequence", min=1, max=config.context_length)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation chatter; failures still raise
        torch.onnx.export(_LogitsOnly(model), (example,), str(path), input_names=["input_ids"],
                          output_names=["logits"], dynamo=True, dynamic_shapes=shapes, verbose=False)
    return path


class _LogitsOnly(torch.nn.Module):
    """The graph ONNX sees: one input, no KV cache."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)


def _template_and_name(config, model) -> tuple[Optional[str], str]:
    template = getattr(getattr(config, "data", None), "template", None)
    model_config = getattr(config, "model", None) or config or model.config
    return template, getattr(model_config, "name", None) or model.config.name


def export_model(model: torch.nn.Module, tokenizer, config, out_dir: str | Path, fmt: str = "hf",
                 gguf_type: str = "f16", source: Optional[str] = None, overwrite: bool = False,
                 onnx_precision: str = "fp32", onnx_device: str = "cpu", runs_dir: Optional[Path] = None,
                 checkpoint_written: Optional[int] = None) -> list[Path]:
    """Write `model` as `fmt` ('hf' | 'gguf' | 'onnx') into out_dir; returns the written file paths.

    hf: config.json, model.safetensors, generation_config.json, tokenizer files (transformers loads it).
    gguf: <name>-<gguf_type>.gguf (gguf_type 'f32' | 'f16' | 'q8_0') with tokenizer metadata, plus an
    Ollama Modelfile. gguf-lora (a LoRA model): the base's GGUF, llama.cpp's LoRA adapter GGUF and a Modelfile
    with ADAPTER. onnx: onnxruntime-genai's runtime-ready folder (KV-cache graph, genai_config.json,
    tokenizer; onnx_precision fp32 | int8 | int4 | fp16 on onnx_device cpu | cuda), built by its own model
    builder (slm_core.infer.onnx). onnx-graph: a plain model.onnx (input_ids → logits, no cache) plus the
    tokenizer as HF tokenizer.json. Every format also
    gets export.json (format, type, source, time, and `checkpoint_written`: when the source checkpoint it loaded was
    written, for slm_core.infer.engine_choice.genai_exports). `config`: RunConfig, ModelConfig or None."""
    if fmt not in FORMATS:
        raise SLMError(f"export format {fmt!r} is unknown: use one of {', '.join(FORMATS)}")
    if fmt != "gguf-lora":  # gguf-lora keeps base and adapter apart
        # GGUF converts tensor by tensor itself: a bf16 model is not doubled into an fp32 copy first
        model = plain_float_model(model, keep_dtype=fmt == "gguf")
    template, name = _template_and_name(config, model)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise SLMError(f"{out_dir} already exists and is not empty: choose another output folder or allow overwrite")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        if fmt == "gguf-lora":
            files = write_lora_bundle(model, tokenizer, tmp, gguf_type, name, template,
                                      gguf_base_models(export_lineage(source, fmt, out_dir, runs_dir)))
        elif fmt == "onnx":
            files = build_genai_folder(model, tokenizer, tmp, onnx_precision, onnx_device, template)
        else:
            files = _write(model, tokenizer, tmp, fmt, gguf_type, name, template,
                           gguf_base_models(export_lineage(source, fmt, out_dir, runs_dir)) if fmt == "gguf" else None)
        if fmt == "hf":  # the model card: the source's newest report card and its lineage (the Hub's model tree)
            tree = export_lineage(source, fmt, out_dir, runs_dir)
            files.append(write_model_card(tmp, card_of_source(source, runs_dir), name=out_dir.name, lineage=tree))
        info = {"format": fmt, "gguf_type": gguf_type if fmt.startswith("gguf") else None, "name": name,
                "onnx_precision": onnx_precision if fmt == "onnx" else None,
                "source": None if source is None else str(source), "template": template,
                "files": [p.relative_to(tmp).as_posix() for p in files], "created_at": time.time(),
                "checkpoint_written": checkpoint_written}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
        record_derived(tmp, source, "exported_from", near=out_dir, runs_dir=runs_dir,
                       tokenizer=tokenizer and tokenizer.fingerprint(), details={"format": fmt, "gguf_type": info["gguf_type"]})
        files.append(tmp / INFO_FILE)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out_dir / p.relative_to(tmp) for p in files]


def _write(model, tokenizer, folder: Path, fmt: str, gguf_type: str, name: str,
           template: Optional[str], base_models: Optional[list[dict]] = None) -> list[Path]:
    if fmt == "hf":
        return save_hf_folder(model, tokenizer, folder, template=template)
    if fmt == "gguf":
        gguf_path = write_gguf(model, tokenizer, folder / f"{safe_name(name)}-{gguf_type}.gguf", gguf_type, name,
                               base_models=base_models)
        return [gguf_path, ollama_modelfile(folder, gguf_path.name, template)]
    files = [export_onnx(model, folder / "model.onnx")]  # onnx-graph
    files += [p for p in folder.iterdir() if p.name.startswith("model.onnx") and p not in files]  # external data
    if tokenizer is not None:
        before = set(folder.iterdir())
        tokenizer.save_hf(folder)
        files += sorted(set(folder.iterdir()) - before)
    return files
