"""Export: GGUF read by real clients (gguf's reader, transformers' GGUF loader), ONNX run by
onnxruntime, Hugging Face folders, and all-or-nothing writes."""

import json

import numpy as np
import pytest
import torch

from slm_core.config import ModelConfig, RunConfig, TokenizerConfig
from slm_core.errors import SLMError
from slm_core.models import quantized as Q
from slm_core.models.model import Transformer
from slm_core.post.export import export_model
from slm_core.post.export_gguf import gguf_tensors, permute_for_llama_cpp, read_gguf

transformers = pytest.importorskip("transformers")
TEXTS = ["the cat sat on the mat, and the dog sat on the log. " * 30, "Once upon a time there was a fox! " * 30]


@pytest.fixture(scope="module")
def tokenizer():
    from slm_core.models.tokenizer import build_tokenizer

    return build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=320), TEXTS, progress=False)


def random_model(vocab: int, family: str = "llama", **overrides) -> Transformer:
    torch.manual_seed(0)
    settings = dict(family=family, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else None, d_model=64,
                    context_length=64, vocab_size=vocab)
    settings.update(overrides)
    model = Transformer(ModelConfig(**settings))
    with torch.no_grad():
        for name, param in model.named_parameters():
            # sharp attention (large q/k) so a wrong RoPE row order cannot hide in near-uniform scores
            param.normal_(0.0, 0.5 if name.endswith(("q_proj.weight", "k_proj.weight")) else 0.1)
    return model.eval()


def ours(model, ids):
    with torch.no_grad():
        return model(ids)


def load_gguf_in_transformers(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32)
    return model.eval()


@pytest.mark.parametrize("family,overrides,arch", [
    ("llama", dict(tie_embeddings=True), "LlamaForCausalLM"),
    ("llama", dict(tie_embeddings=False, n_kv_head=1, rope_theta=5e5), "LlamaForCausalLM"),
    ("llama", dict(rope_scaling="dynamic", rope_scaling_factor=4.0), "LlamaForCausalLM"),
    ("llama", dict(qkv_bias=True), "Qwen2ForCausalLM"),
    # transformers' GGUF reader maps gpt2.context_length to n_ctx, not n_positions (default 1024)
    ("gpt2", dict(context_length=1024), "GPT2LMHeadModel"),
], ids=["llama-tied", "llama-mqa-untied", "llama-ntk-rope", "qwen2", "gpt2"])
def test_f32_gguf_loads_in_transformers_with_our_logits(tmp_path, tokenizer, family, overrides, arch):
    model = random_model(tokenizer.n_vocab, family, **overrides)
    files = export_model(model, tokenizer, model.config, tmp_path / "out", fmt="gguf", gguf_type="f32")
    gguf_file = next(p for p in files if p.suffix == ".gguf")
    hf = load_gguf_in_transformers(gguf_file)
    ids = torch.tensor([tokenizer.encode("the cat sat on the mat, once upon a time")])
    with torch.no_grad():
        theirs = hf(ids).logits
    assert type(hf).__name__ == arch
    assert torch.allclose(theirs, ours(model, ids), atol=1e-4), (theirs - ours(model, ids)).abs().max()


def test_linear_rope_scaling_is_recorded_for_llama_cpp(tmp_path):
    # (transformers' GGUF reader ignores llama rope scaling keys, so this is checked in the metadata)
    model = random_model(64, rope_scaling="linear", rope_scaling_factor=4.0)
    files = export_model(model, None, None, tmp_path / "g", "gguf", "f16")
    fields, _ = read_gguf(files[0])
    assert fields["llama.rope.scaling.type"] == "linear" and fields["llama.rope.scaling.factor"] == 4.0


def test_rope_rows_are_reordered_to_llama_cpps_adjacent_pairs():
    rows = torch.arange(8.0)[:, None]  # two heads of size 4
    assert permute_for_llama_cpp(rows, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0"])
def test_gguf_reads_back_with_the_same_tensors_and_metadata(tmp_path, tokenizer, gguf_type):
    import gguf

    model = random_model(tokenizer.n_vocab, tie_embeddings=False)
    files = export_model(model, tokenizer, RunConfig(model=model.config), tmp_path / "g", "gguf", gguf_type)
    path = next(p for p in files if p.suffix == ".gguf")
    fields, tensors = read_gguf(path)
    expected = {k: v.numpy() for k, v in gguf_tensors(model).items()}
    assert set(tensors) == set(expected)
    reader = gguf.GGUFReader(str(path))
    for tensor in reader.tensors:  # GGML lists dimensions innermost first: numpy's shape reversed
        assert tuple(int(n) for n in tensor.shape) == expected[tensor.name].shape[::-1]
    for name, want in expected.items():
        got = tensors[name]
        if gguf_type == "f32" or want.ndim == 1:
            np.testing.assert_array_equal(got, want)
        elif gguf_type == "f16":
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
        else:  # blocks of 32 sharing one fp16 scale d: |error| <= d/2 + 127 * (fp16 rounding of d, 2^-11 d)
            step = np.abs(want.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            assert np.all(np.abs(got - want).reshape(-1, 32) <= step * (0.5 + 127 * 2**-11) + 1e-7), name
    assert fields["general.architecture"] == "llama" and fields["llama.block_count"] == 2
    assert fields["general.file_type"] == {"f32": 0, "f16": 1, "q8_0": 7}[gguf_type]
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.eos_token_id"] == tokenizer.eot_id
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == tokenizer.n_vocab and tokens[tokenizer.eot_id] == "<|endoftext|>"
    assert fields["tokenizer.ggml.merges"], "merges let llama.cpp rebuild our multi-byte tokens"


def test_gguf_tokens_spell_the_tokenizers_bytes(tmp_path, tokenizer):
    from slm_core.models.tokenizer import bytes_to_unicode

    model = random_model(tokenizer.n_vocab)
    files = export_model(model, tokenizer, None, tmp_path / "g", "gguf", "f16")
    fields, _ = read_gguf(next(p for p in files if p.suffix == ".gguf"))
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    for token_id in tokenizer.encode("the cat sat on the mat"):
        text = fields["tokenizer.ggml.tokens"][token_id]
        assert bytes(to_byte[c] for c in text) == tokenizer.decode_bytes([token_id])
    modelfile = (files[0].parent / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{files[0].name}")


def test_gguf_refuses_what_llama_cpp_cannot_run(tmp_path):
    with pytest.raises(SLMError, match="bias"):
        export_model(random_model(64, bias=True), None, None, tmp_path / "b", "gguf", "f32")
    with pytest.raises(SLMError, match="f32, f16, q8_0"):
        export_model(random_model(64), None, None, tmp_path / "c", "gguf", "q4_k")
    assert list(tmp_path.iterdir()) == []  # failed exports leave nothing behind, not even temp folders


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_onnx_export_runs_in_onnxruntime_with_our_logits(tmp_path, tokenizer, family):
    ort = pytest.importorskip("onnxruntime")
    model = random_model(tokenizer.n_vocab, family)
    files = export_model(model, tokenizer, model.config, tmp_path / "onnx", fmt="onnx-graph")
    assert {"model.onnx", "tokenizer.json", "export.json"} <= {p.name for p in files}
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(1, 1), (2, 9), (3, 64)]:  # batch and sequence are dynamic up to the context
        ids = torch.randint(0, tokenizer.n_vocab, shape)
        (logits,) = session.run(["logits"], {"input_ids": ids.numpy()})
        assert np.abs(logits - ours(model, ids).numpy()).max() < 1e-4


def test_hf_export_of_a_quantized_model_carries_its_rounded_weights(tmp_path, tokenizer):
    model = random_model(tokenizer.n_vocab)
    quantized = Q.quantize_model(model, "int8")
    files = export_model(quantized, tokenizer, RunConfig(model=model.config), tmp_path / "hf", fmt="hf",
                         source="runs/demo")
    names = {p.name for p in files}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "export.json"} <= names
    info = json.loads((tmp_path / "hf" / "export.json").read_text())
    assert info["format"] == "hf" and info["source"] == "runs/demo"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    ids = torch.tensor([tokenizer.encode("once upon a time")])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, ours(Q.dequantize_model(quantized), ids), atol=1e-4)


def test_export_never_overwrites_without_being_asked(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(SLMError, match="already exists"):
        export_model(random_model(64), None, None, target, fmt="hf")
    assert (target / "keep.txt").read_text() == "mine"
    files = export_model(random_model(64), None, None, target, fmt="hf", overwrite=True)
    assert not (target / "keep.txt").exists() and all(p.exists() for p in files)


def test_llama_cpp_runs_the_gguf(tmp_path, tokenizer):
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama-cpp-python is not installed (it compiles llama.cpp for ~17 minutes); the GGUF is "
                    "checked through gguf's reader and transformers' GGUF loader instead")
    model = random_model(tokenizer.n_vocab)
    files = export_model(model, tokenizer, model.config, tmp_path / "g", "gguf", "f32")
    llm = llama_cpp.Llama(model_path=str(files[0]), n_ctx=64, logits_all=True, verbose=False)
    ids = tokenizer.encode("the cat sat on the mat")
    assert llm.tokenize("the cat sat on the mat".encode(), add_bos=False, special=False) == ids
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    assert np.abs(theirs - ours(model, torch.tensor([ids]))[0].numpy()).max() < 1e-3


def test_character_tokenizers_get_a_llama_cpp_vocabulary(tmp_path):
    from slm_core.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(TokenizerConfig(kind="char"), ["héllo — wörld\n"], progress=False)
    model = random_model(tokenizer.n_vocab, "gpt2")
    files = export_model(model, tokenizer, None, tmp_path / "g", "gguf", "f16")
    fields, _ = read_gguf(files[0])
    tokens, merges = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.merges"]
    assert len(tokens) == tokenizer.n_vocab
    # é is two bytes (one merge); the em dash is three: reached through a chain of byte merges
    assert "Ã ©" in merges and "â Ģ" in merges and "âĢ Ķ" in merges


def test_cli_commands_write_artifacts_beside_the_source(tmp_path, tokenizer, capsys):
    import argparse

    from slm_core.cli.export import add_export_parser, cmd_export
    from slm_core.cli.quantize import add_quantize_parser, cmd_quantize
    from slm_core.models.hf import save_hf_folder

    source = tmp_path / "mymodel"
    save_hf_folder(random_model(tokenizer.n_vocab), tokenizer, source)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_quantize_parser(sub)
    add_export_parser(sub)
    assert cmd_quantize(parser.parse_args(["quantize", str(source), "--method", "int4", "--group-size", "32"])) == 0
    assert (tmp_path / "mymodel-int4-g32" / "quantization.json").exists()
    assert cmd_export(parser.parse_args(["export", str(tmp_path / "mymodel-int4-g32"), "--format", "gguf",
                                         "--gguf-type", "q8_0"])) == 0
    assert (tmp_path / "mymodel-int4-g32-gguf-q8_0" / "mymodel-q8_0.gguf").exists()
    assert "mymodel-q8_0.gguf" in capsys.readouterr().out
