"""Real model families load into our one Transformer and compute what transformers computes.

For each family (Llama 3.2 / 3.1 with llama3 rope, Llama 2, Mistral with a sliding window,
SmolLM2, Qwen2.5 with q/k/v biases, Qwen3 with q/k norm and its own head_dim, GPT-2): a random
transformers model from the family's published config values (shrunk), saved with
save_pretrained, is loaded by `load_model` and must give the same fp32 logits and the same greedy
tokens; exporting it back must load in transformers with the same logits and the original
config.json fields (rope scaling, bos/eos ids, tie).
"""

import json

import pytest
import torch
from hf_families import FAMILIES, hf_model

from slm_core.errors import SLMError
from slm_core.infer.generate import generate_tokens
from slm_core.models.hf import from_hf, save_hf_folder
from slm_core.models.load import load_model

transformers = pytest.importorskip("transformers")
IDS = torch.tensor([[3, 17, 42, 8, 99, 5, 61, 23, 7, 12], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])


def _rope_fields(config: dict) -> dict:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return {k: v for k, v in rope.items() if k != "rope_theta"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_logits_greedy_and_export_match_transformers(tmp_path, family):
    hf = hf_model(family)
    hf.save_pretrained(tmp_path / "hf")
    loaded = load_model(tmp_path / "hf")
    with torch.no_grad():
        expected, ours = hf(IDS).logits, loaded.model(IDS)
    assert (ours - expected).abs().max() < 1e-4, family

    prompt = IDS[0, :5].tolist()
    want = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=8, min_new_tokens=8,
                       pad_token_id=0)[0, 5:].tolist()
    got = list(generate_tokens(loaded.model, prompt, max_new_tokens=8, temperature=0.0))
    assert got == want, family

    save_hf_folder(loaded.model, None, tmp_path / "out")
    original = json.loads((tmp_path / "hf" / "config.json").read_text())
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    for key in ("architectures", "bos_token_id", "eos_token_id", "tie_word_embeddings", "max_position_embeddings",
                "sliding_window", "head_dim"):
        if key in original:
            assert written.get(key) == original[key], key
    assert _rope_fields(written) == _rope_fields(original)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (back(IDS).logits - expected).abs().max() < 1e-4


def test_mistral_sliding_window_becomes_the_context_length(tmp_path):
    hf_model("mistral").save_pretrained(tmp_path)
    config, _ = from_hf(tmp_path)
    assert config.context_length == FAMILIES["mistral"][1]["sliding_window"]


def _write_config(tmp_path, family: str, **changes):
    raw = hf_model(family).config.to_dict()
    raw.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(raw))  # no weights: refusal must come from the config
    return tmp_path


@pytest.mark.parametrize("family,changes,field", [
    ("qwen2.5", {"use_sliding_window": True, "max_window_layers": 1, "layer_types": None}, "use_sliding_window"),
    ("qwen3", {"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
    ("llama-2", {"num_local_experts": 8}, "num_local_experts"),
    ("llama-2", {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral"}, "architectures"),
    ("llama-2", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "rope_type"),
    ("llama-2", {"hidden_act": "gelu"}, "hidden_act"),
])
def test_unsupported_config_features_are_refused_before_weights_naming_the_field(tmp_path, family, changes, field):
    folder = _write_config(tmp_path, family, **changes)
    with pytest.raises(SLMError, match=field):
        load_model(folder)


def test_a_folder_without_config_json_says_what_to_point_at(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(SLMError):
        from_hf(tmp_path)
    with pytest.raises(SLMError, match="config.json"):
        from_hf(tmp_path)


def test_load_keeps_one_copy_of_the_weights(tmp_path):
    """Parameters are the memory-mapped safetensors tensors themselves (no init, no copy)."""
    hf_model("llama-3.2", vocab_size=512).save_pretrained(tmp_path)
    model = load_model(tmp_path).model
    assert model.lm_head.weight is model.embed_tokens.weight  # tie survives assign=True
    assert not any(p.is_meta for p in model.parameters())


def test_a_hub_shaped_folder_chats_in_its_own_template(tmp_path):
    """Model + real Qwen2 tokenizer (with its chat template) in one folder, as downloaded: the prompt is
    rendered with the template into transformers' ids, and the greedy reply equals transformers'."""
    import shutil

    from hf_families import vocab_folder

    for path in vocab_folder("qwen2").iterdir():
        shutil.copy(path, tmp_path / path.name)
    theirs_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    hf = hf_model("qwen2.5", vocab_size=len(theirs_tok), scale=0.05)
    hf.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    tokenizer = loaded.tokenizer
    assert theirs_tok.convert_tokens_to_ids("<|im_end|>") in tokenizer.stop_ids
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    want_ids = theirs_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    want_ids = want_ids["input_ids"] if hasattr(want_ids, "keys") else want_ids
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert ids == want_ids
    want = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=6, min_new_tokens=6,
                       pad_token_id=0)[0, len(ids):].tolist()
    got = list(generate_tokens(loaded.model, ids, max_new_tokens=6, temperature=0.0, stop_ids=tokenizer.stop_ids))
    assert got == want[:len(got)] and (len(got) == 6 or want[len(got)] in tokenizer.stop_ids)
