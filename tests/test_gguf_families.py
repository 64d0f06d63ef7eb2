"""GGUF export of real families, checked against llama.cpp's own reference vocab files in ../shared/data/vocab
(what its converter writes per family: tokenizer.ggml.pre, tokens, token types, merges, special ids, add_bos,
SentencePiece scores) and against the Hugging Face weights (llama.cpp's q/k permutation for the llama graph,
Llama 3's rope_freqs, Qwen2's biases, Qwen3's q/k norms, tied embeddings); each quantization level within its
error bound; a LoRA trained on a Hugging Face folder as llama.cpp's LoRA GGUF equal to the merged export."""

import json
import sys

import numpy as np
import pytest
import torch
from hf_families import LLAMA2_CHAT, VOCAB_DIR, hf_model, tokenizer_copy

from slm_core.config import ModelConfig
from slm_core.errors import SLMError
from slm_core.models.load import load_model
from slm_core.models.model import Transformer
from slm_core.post.export import export_model
from slm_core.post.export_gguf import read_gguf
from slm_core.post.gguf_quant import K_LEVELS, NUMPY_LEVELS, k_quantizer
from slm_core.post.gguf_read import read_metadata

pytest.importorskip("gguf")
pytest.importorskip("transformers")

# family → (reference vocab, vocabulary size, general.architecture, tokenizer.ggml.pre, add_bos)
CASES = {
    "llama-3.2": ("llama-bpe", 128256, "llama", "llama-bpe", True),
    "qwen2.5": ("qwen2", 151936, "qwen2", "qwen2", False),
    "qwen3": ("qwen2", 151936, "qwen3", "qwen2", False),
    "smollm2": ("gpt-2", 50257, "llama", "smollm", False),  # SmolLM's digit-splitting pre-tokenizer, GPT-2's vocab
    "llama-2": ("llama-spm", 32000, "llama", "default", True),
}
SMOLLM_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}


def family_folder(root, family: str):
    """A folder shaped like the family's Hub download: random weights, the real tokenizer (+ chat template)."""
    vocab, size = CASES[family][:2]
    folder = tokenizer_copy(vocab, root, LLAMA2_CHAT if family == "llama-2" else None)
    spec = json.loads((folder / "tokenizer.json").read_text())
    # transformers' reading of the Llama 3 vocab adds a stray <|endoftext|> past the 128,256 rows: not Llama 3's
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < size]
    if family == "smollm2":
        spec["pre_tokenizer"] = SMOLLM_PRE
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    hf_model(family, vocab_size=size).save_pretrained(folder)
    return folder


def llama_cpp_permute(weights: torch.Tensor, n_head: int, n_head_kv) -> torch.Tensor:
    """convert_hf_to_gguf's LlamaModel.permute, as written there."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


@pytest.fixture(scope="module")
def reference():
    if not VOCAB_DIR.exists():
        pytest.skip(f"llama.cpp's reference vocab files are not in {VOCAB_DIR}")
    return lambda vocab: read_metadata(VOCAB_DIR / f"ggml-vocab-{vocab}.gguf")


@pytest.mark.slow
@pytest.mark.parametrize("family", list(CASES))
def test_family_exports_as_llama_cpp_converts_it(tmp_path, reference, family):
    vocab, size, arch, pre, add_bos = CASES[family]
    (tmp_path / "hf").mkdir()
    folder = family_folder(tmp_path / "hf", family)
    loaded = load_model(str(folder))
    files = export_model(loaded.model, loaded.tokenizer, loaded.config, tmp_path / "out", fmt="gguf", gguf_type="f32")
    fields, tensors = read_gguf(next(p for p in files if p.suffix == ".gguf"))
    want = reference(vocab)

    assert fields["general.architecture"] == arch and fields["tokenizer.ggml.pre"] == pre
    assert fields["tokenizer.ggml.model"] == want["tokenizer.ggml.model"]
    assert fields[f"{arch}.vocab_size"] == len(fields["tokenizer.ggml.tokens"]) == size
    assert fields["tokenizer.ggml.tokens"] == want["tokenizer.ggml.tokens"]
    real = [i for i, t in enumerate(want["tokenizer.ggml.tokens"]) if not t.startswith("[PAD")]
    assert [fields["tokenizer.ggml.token_type"][i] for i in real] == [want["tokenizer.ggml.token_type"][i] for i in real]
    if "tokenizer.ggml.merges" in want:
        assert fields["tokenizer.ggml.merges"] == want["tokenizer.ggml.merges"]
    else:  # SentencePiece: the scores that decide merges are llama.cpp's; a single character's never decides one
        ours, theirs = fields["tokenizer.ggml.scores"], want["tokenizer.ggml.scores"]
        differ = [i for i in range(size) if ours[i] != theirs[i]]
        assert all(len(want["tokenizer.ggml.tokens"][i]) == 1 for i in differ), differ[:5]
    for key in ("bos", "eos", "unknown", "padding"):
        if f"tokenizer.ggml.{key}_token_id" in want:
            assert fields[f"tokenizer.ggml.{key}_token_id"] == want[f"tokenizer.ggml.{key}_token_id"], key
    assert fields["tokenizer.ggml.add_bos_token"] is add_bos
    assert fields.get("tokenizer.chat_template") == (loaded.tokenizer.chat_template or None)
    if vocab == "qwen2":
        assert fields["tokenizer.chat_template"] == want["tokenizer.chat_template"]
        assert fields["tokenizer.ggml.eot_token_id"] == 151645  # <|im_end|> ends a turn; eos is <|endoftext|>
    _assert_tensors_are_the_hf_weights(folder, family, arch, tensors)
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    if family == "llama-2":
        assert "<<SYS>>" in modelfile and "{{ .System }}" in modelfile and 'stop "[INST]"' in modelfile
    if vocab == "qwen2":
        assert "<|im_start|>system" in modelfile and 'SYSTEM """You are a helpful assistant"""' in modelfile


def _assert_tensors_are_the_hf_weights(folder, family: str, arch: str, tensors: dict) -> None:
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    config, state = hf.config, {k: v.float() for k, v in hf.state_dict().items()}
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads

    def same(name, tensor):
        np.testing.assert_array_equal(tensors[name], tensor.numpy(), err_msg=name)

    same("token_embd.weight", state["model.embed_tokens.weight"])
    same("output_norm.weight", state["model.norm.weight"])
    assert ("output.weight" in tensors) is (not config.tie_word_embeddings)
    if not config.tie_word_embeddings:
        same("output.weight", state["lm_head.weight"])
    for i in range(config.num_hidden_layers):
        src = f"model.layers.{i}."
        q, k = state[src + "self_attn.q_proj.weight"], state[src + "self_attn.k_proj.weight"]
        if arch == "llama":  # llama.cpp's llama graph rotates adjacent pairs; qwen2/qwen3 use HF's halves
            q, k = llama_cpp_permute(q, heads, heads), llama_cpp_permute(k, heads, kv_heads)
        same(f"blk.{i}.attn_q.weight", q)
        same(f"blk.{i}.attn_k.weight", k)
        for ours, theirs in (("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
                             ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"),
                             ("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            same(f"blk.{i}.{ours}.weight", state[f"{src}{theirs}.weight"])
        if arch == "qwen2":
            for n in "qkv":
                same(f"blk.{i}.attn_{n}.bias", state[f"{src}self_attn.{n}_proj.bias"])
        if arch == "qwen3":
            same(f"blk.{i}.attn_q_norm.weight", state[src + "self_attn.q_norm.weight"])
            same(f"blk.{i}.attn_k_norm.weight", state[src + "self_attn.k_norm.weight"])
    assert ("rope_freqs.weight" in tensors) is (family == "llama-3.2")
    if family == "llama-3.2":  # plain frequencies / rope_freqs = transformers' llama3 frequencies
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
        dim = config.head_dim
        plain = 1.0 / (config.rope_parameters["rope_theta"] ** (torch.arange(0, dim, 2).float() / dim))
        np.testing.assert_allclose(plain.numpy() / tensors["rope_freqs.weight"], inv_freq.numpy(), rtol=1e-5)


def test_an_unknown_pre_tokenizer_is_refused_in_one_line(tmp_path):
    folder = tokenizer_copy("gpt-2", tmp_path)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    from slm_core.models.tokenizer import Tokenizer

    model = Transformer(ModelConfig(family="llama", n_layer=1, n_head=2, d_model=32, vocab_size=50257,
                                    context_length=16))
    with pytest.raises(SLMError, match="pre-tokenizer .*Whitespace.* is not one GGUF export knows") as error:
        export_model(model, Tokenizer.from_hf(folder), None, tmp_path / "out", fmt="gguf")
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


# ---- the quantization ladder ---------------------------------------------------------------------------

def _block_bound(level: str, blocks: np.ndarray) -> np.ndarray:
    """Largest |dequantized - original| a level allows per 32-weight block (rounding, clipping, f16 scales)."""
    amax, lo, hi = np.abs(blocks).max(-1), blocks.min(-1), blocks.max(-1)
    return {"f16": amax * 2.0 ** -10, "q8_0": 0.6 * amax / 127, "q5_0": 1.1 * amax / 16, "q4_0": 1.1 * amax / 8,
            "q5_1": 0.6 * (hi - lo) / 31 + np.abs(lo) * 2.0 ** -10,
            "q4_1": 0.6 * (hi - lo) / 15 + np.abs(lo) * 2.0 ** -10}[level] + 1e-7


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(family="llama", n_layer=2, n_head=4, n_kv_head=2, d_model=64, vocab_size=96,
                                    context_length=32, qkv_bias=True)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.5)
    return model


def test_each_level_dequantizes_within_its_bound_and_shrinks_the_file(tmp_path, small_model):
    sizes = {}
    exact = None
    for level in NUMPY_LEVELS:
        files = export_model(small_model, None, None, tmp_path / level, fmt="gguf", gguf_type=level)
        path = next(p for p in files if p.suffix == ".gguf")
        fields, tensors = read_gguf(path)
        sizes[level] = path.stat().st_size
        if level == "f32":
            exact = tensors
            continue
        weights, edge, file_type = NUMPY_LEVELS[level]
        import gguf

        assert fields["general.file_type"] == int(gguf.LlamaFileType[file_type])
        for name, got in tensors.items():
            want = exact[name]
            if want.ndim == 1:
                np.testing.assert_array_equal(got, want, err_msg=name)  # norms and biases stay f32
                continue
            kind = (edge if name.startswith(("token_embd", "output.")) else weights).lower()
            blocks = want.reshape(-1, 32)
            error = np.abs(got.reshape(-1, 32) - blocks).max(-1)
            assert (error <= _block_bound(kind, blocks)).all(), (level, name, float((error / _block_bound(kind, blocks)).max()))
    order = ["f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]
    assert [sizes[k] for k in order] == sorted(sizes.values(), reverse=True)


def test_k_quants_without_llama_cpp_are_refused_in_one_line(tmp_path, small_model, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-quantize ...
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # ... and no bindings (import raises), as on most machines
    assert k_quantizer() is None
    for level in K_LEVELS:
        with pytest.raises(SLMError, match=f"GGUF {level} needs llama.cpp's quantizer") as error:
            export_model(small_model, None, None, tmp_path / level, fmt="gguf", gguf_type=level)
        assert "\n" not in str(error.value)
        assert not (tmp_path / level).exists()  # never a lower level under the K-quant's name


@pytest.mark.slow
def test_k_quants_written_by_llama_cpp_read_back_close(tmp_path, small_model):
    if k_quantizer() is None:
        pytest.skip("neither llama-quantize on PATH nor llama-cpp-python is installed")
    import gguf

    _, exact = read_gguf(next(p for p in export_model(small_model, None, None, tmp_path / "f32", fmt="gguf",
                                                      gguf_type="f32") if p.suffix == ".gguf"))
    for level in K_LEVELS:
        path = next(p for p in export_model(small_model, None, None, tmp_path / level, fmt="gguf", gguf_type=level)
                    if p.suffix == ".gguf")
        fields, tensors = read_gguf(path)
        assert fields["general.file_type"] == int(gguf.LlamaFileType[K_LEVELS[level]])
        for name, want in exact.items():
            scale = np.abs(want).max()
            assert np.abs(tensors[name] - want).max() <= 0.2 * scale, (level, name)


# ---- LoRA trained on a Hugging Face folder ---------------------------------------------------------------

@pytest.mark.slow
def test_lora_trained_on_a_hf_folder_exports_as_llama_cpp_lora(tmp_path):
    from slm_core.config import load_recipe
    from slm_core.train.loop import train

    (tmp_path / "llama2").mkdir()
    folder = family_folder(tmp_path / "llama2", "llama-2")
    config = load_recipe("lora-instructions-cpu", [
        f"train.init_from={folder}", "data.template=model", "data.max_chars=4000", "model.context_length=32", "train.max_steps=2",
        "train.eval_interval=2", "train.ckpt_interval=2", "train.batch_size=2", "train.eval_batches=1",
        "train.lr=0.05", "train.warmup_steps=0", "train.precision=fp32", "train.sample_tokens=0"])
    assert train(config, tmp_path / "run", progress=False)["state"] == "finished"

    lora_files = export_model(*_loaded(tmp_path / "run"), tmp_path / "lora", fmt="gguf-lora", gguf_type="f32")
    merged_files = export_model(*_loaded(tmp_path / "run"), tmp_path / "merged", fmt="gguf", gguf_type="f32")
    _, base = read_gguf(next(p for p in lora_files if "-base-" in p.name))
    fields, adapter = read_gguf(next(p for p in lora_files if "-lora-" in p.name))
    _, merged = read_gguf(next(p for p in merged_files if p.suffix == ".gguf"))
    settings = json.loads(next((tmp_path / "run" / "checkpoints").glob("*/adapter/adapter_config.json")).read_text())
    assert fields["adapter.lora.alpha"] == settings["lora_alpha"] and fields["general.architecture"] == "llama"
    adapted = {name.rsplit(".", 1)[0] for name in adapter}
    assert adapted and all(name in base for name in adapted)
    for name, tensor in base.items():
        if name in adapted:
            a, b = adapter[name + ".lora_a"], adapter[name + ".lora_b"]
            tensor = tensor + b @ a * (settings["lora_alpha"] / a.shape[0])
        np.testing.assert_allclose(tensor, merged[name], atol=2e-5, err_msg=name)
    modelfile = (tmp_path / "lora" / "Modelfile").read_text()
    assert "ADAPTER ./" in modelfile and "<<SYS>>" in modelfile and "{{ .System }}" in modelfile


def _loaded(run):
    loaded = load_model(str(run))
    return loaded.model, loaded.tokenizer, loaded.config


# ---- llama.cpp itself, where it is installed --------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2.5", "llama-3.2", "llama-2"])
def test_llama_cpp_greedy_tokens_equal_ours(tmp_path, family):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: greedy tokens are "
                                                        "checked through the tensors and metadata above instead")
    from slm_core.infer.generate import generate_tokens

    (tmp_path / "hf").mkdir()
    folder = family_folder(tmp_path / "hf", family)
    loaded = load_model(str(folder))
    path = next(p for p in export_model(loaded.model, loaded.tokenizer, loaded.config, tmp_path / "out", fmt="gguf",
                                        gguf_type="f32") if p.suffix == ".gguf")
    prompt = loaded.tokenizer.encode("The quick brown fox jumps over the lazy dog")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, verbose=False, logits_all=False)
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        theirs.append(token)
        if len(theirs) == 8:
            break
    ours = list(generate_tokens(loaded.model, prompt, max_new_tokens=8, temperature=0.0, one_row_half=False))
    assert theirs == ours


# ---- the size/quality table (Export tab) -----------------------------------------------------------------

@pytest.mark.parametrize("shape", [dict(family="llama", n_kv_head=2), dict(family="llama", qk_norm=True),
                                   dict(family="gpt2")])
def test_an_export_reads_back_into_the_model_it_came_from(tmp_path, shape):
    from slm_core.post.gguf_quality import model_from_gguf

    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=2, n_head=4, d_model=32, vocab_size=64, context_length=16, **shape)).eval()
    path = next(p for p in export_model(model, None, None, tmp_path / "out", fmt="gguf", gguf_type="f32")
                if p.suffix == ".gguf")
    back = model_from_gguf(model, path).state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(back[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_quality_table_measures_the_written_level_against_f16(tmp_path, tiny_char_run):
    from slm_core.post.export import plain_float_model
    from slm_core.post.gguf_quality import quality_table

    loaded = load_model(str(tiny_char_run))
    model = plain_float_model(loaded.model)
    path = next(p for p in export_model(model, loaded.tokenizer, loaded.config, tmp_path / "q4", fmt="gguf",
                                        gguf_type="q4_0") if p.suffix == ".gguf")
    rows = {row["level"]: row for row in quality_table(loaded, model, path, "q4_0", max_tokens=2000)}
    assert list(rows) == list(NUMPY_LEVELS) + list(K_LEVELS)
    assert rows["q4_0"]["bytes"] == path.stat().st_size
    assert rows["f16"]["perplexity"] > 1 and rows["q4_0"]["perplexity"] > 1
    assert rows["q4_0"]["vs_f16"] == pytest.approx(rows["q4_0"]["perplexity"] / rows["f16"]["perplexity"] - 1)
    assert rows["q8_0"]["perplexity"] is None and rows["f32"]["bytes"] > rows["f16"]["bytes"] > rows["q8_0"]["bytes"]
