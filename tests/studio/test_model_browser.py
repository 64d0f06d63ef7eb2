"""The Model tab's Hub browser renders slm_core.models.hub's answers: hits, one model's weights with sizes and fit,
and offline the message above the local cache (no connection tried)."""

from __future__ import annotations

from huggingface_hub.hf_api import ModelInfo

from slm_core.models import hub
from studio import model_browser


def _qwen() -> hub.HubModel:
    return hub.describe(ModelInfo(**{
        "id": "Qwen/Qwen2.5-0.5B-Instruct", "downloads": 2_500_000, "likes": 300, "gated": False,
        "config": {"model_type": "qwen2"}, "safetensors": {"parameters": {"BF16": 494_032_768}, "total": 494_032_768},
        "siblings": [{"rfilename": "model.safetensors", "size": 988_097_824},
                     {"rfilename": "qwen2.5-0.5b-instruct-q4_k_m.gguf", "size": 491_400_032},
                     {"rfilename": "huge-q8_0.gguf", "size": 1 << 60}]}))


def test_hits_and_one_models_weights_render_with_fit():
    text = model_browser.results([_qwen()], [], None)
    assert "| Qwen/Qwen2.5-0.5B-Instruct | qwen2 | 494.0M | 2.5M | 300 |" in text
    about = model_browser.details(_qwen())
    assert "**Qwen/Qwen2.5-0.5B-Instruct** · qwen2 · 494.0M parameters" in about
    assert "| safetensors | 942.32 MB |" in about and "fits" in about
    assert "| GGUF Q4_K_M | 468.64 MB |" in about
    assert "GGUF Q8_0" in about and "does not fit" in about
    assert model_browser.choices([_qwen()], []) == [("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct")]


def test_offline_search_says_so_and_lists_the_cache(tmp_path, monkeypatch, network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"x" * 100)
    text, options = model_browser.search("tiny", model_browser.ANY_FAMILY, False, None)
    assert "HF_HUB_OFFLINE is set" in text and "| org/tiny | 102 B | 2 |" in text
    assert options == [("org/tiny (cache)", "org/tiny")] and network == []
    assert "HF_HUB_OFFLINE is set" in model_browser.show("org/tiny")
