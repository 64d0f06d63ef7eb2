"""A LoRA model exported for llama.cpp: the base GGUF plus a LoRA GGUF in llama.cpp's layout. Read back with
gguf.GGUFReader, base + lora_b·lora_a·alpha/r equals the merged model's own GGUF tensor by tensor (so names,
shapes, q/k row order and scale all line up with what llama.cpp applies)."""

import copy

import numpy as np
import pytest
import torch

from slm_core.config import LoRAConfig, ModelConfig
from slm_core.errors import SLMError
from slm_core.models.lora import apply_lora
from slm_core.models.model import Transformer
from slm_core.post.export import export_model
from slm_core.post.export_gguf import gguf_tensors, read_gguf

pytest.importorskip("gguf")
pytest.importorskip("peft")

SHAPES = {  # Llama-3.2's kind (GQA, permuted q/k rows), Qwen2's (q/k/v biases, no permutation), GPT-2 (fused qkv)
    "llama": dict(family="llama", n_layer=2, n_head=4, n_kv_head=2, d_model=64, vocab_size=300),
    "qwen2": dict(family="llama", n_layer=2, n_head=4, n_kv_head=2, d_model=64, vocab_size=300, qkv_bias=True),
    "gpt2": dict(family="gpt2", n_layer=2, n_head=4, d_model=64, vocab_size=300),
}


def _lora_model(shape: str, targets):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(context_length=64, **SHAPES[shape]))
    lora = apply_lora(model, LoRAConfig(r=4, alpha=12, dropout=0.0, targets=targets))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    return lora.eval()


@pytest.mark.parametrize("shape,targets", [("llama", "all"), ("qwen2", "attention"), ("gpt2", ["q_proj", "v_proj",
                                                                                             "down_proj"])])
def test_base_plus_lora_gguf_equals_the_merged_model(tmp_path, shape, targets):
    lora = _lora_model(shape, targets)
    merged = gguf_tensors(copy.deepcopy(lora).merge_and_unload())
    files = export_model(lora, None, None, tmp_path / "out", fmt="gguf-lora", gguf_type="f32")
    base_file = next(p for p in files if "-base-" in p.name)
    lora_file = next(p for p in files if "-lora-" in p.name)
    assert "ADAPTER ./" + lora_file.name in (tmp_path / "out" / "Modelfile").read_text()

    fields, adapter = read_gguf(lora_file)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 12.0
    assert fields["general.architecture"] == ("gpt2" if shape == "gpt2" else shape)
    _, base = read_gguf(base_file)
    adapted = {name.rsplit(".", 1)[0] for name in adapter}
    per_layer = {"llama": 7, "qwen2": 4, "gpt2": 2}[shape]  # gpt2: the fused qkv and ffn_down
    assert len(adapted) == 2 * per_layer and all(n.startswith("blk.") for n in adapted)
    for name in adapted:
        a, b = adapter[name + ".lora_a"], adapter[name + ".lora_b"]
        rank = a.shape[0]
        assert b.shape == (base[name].shape[0], rank) and a.shape == (rank, base[name].shape[1])  # llama.cpp's check
        delta = b @ a * (12.0 / rank)
        np.testing.assert_allclose(base[name] + delta, merged[name].numpy(), atol=1e-5)
    for name, tensor in base.items():  # everything not adapted is the untouched base
        if name not in adapted:
            np.testing.assert_allclose(tensor, merged[name].numpy(), atol=1e-6)


def test_gguf_lora_needs_a_lora_model(tmp_path):
    model = Transformer(ModelConfig(family="llama", n_layer=1, n_head=2, d_model=32, vocab_size=64, context_length=16))
    with pytest.raises(SLMError, match="needs a LoRA run"):
        export_model(model, None, None, tmp_path / "out", fmt="gguf-lora")
    assert not (tmp_path / "out").exists()


def test_the_adapter_gguf_names_its_base_as_llama_cpps_converter_does(tmp_path):
    """general.base_model.* on the adapter: the base it applies to (convert_lora_to_gguf.py writes them from the
    adapter's model card), read from the LoRA run's lineage record."""
    from gguf import GGUFReader

    from slm_core.run import lineage

    run = tmp_path / "runs" / "my-lora"
    run.mkdir(parents=True)
    lineage.write_record(run, "lora", [lineage.parent_ref("HuggingFaceTB/SmolLM2-135M", "adapter_of", near=run)])
    files = export_model(_lora_model("llama", "attention"), None, None, run / "export" / "gl", fmt="gguf-lora",
                         gguf_type="f32", source=str(run), runs_dir=tmp_path / "runs")
    fields = GGUFReader(str(next(p for p in files if "-lora-" in p.name))).fields

    def text(key):
        return bytes(fields[key].parts[fields[key].data[0]]).decode()

    assert text("general.type") == "adapter" and text("adapter.type") == "lora"
    assert int(fields["general.base_model.count"].parts[-1][0]) == 1
    assert text("general.base_model.0.organization") == "HuggingFaceTB"
    assert text("general.base_model.0.repo_url") == "https://huggingface.co/HuggingFaceTB/SmolLM2-135M"
    assert "SmolLM2" in text("general.base_model.0.name")
