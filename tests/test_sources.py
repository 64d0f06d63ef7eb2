"""One model name for every source: a Hub id found in a Hugging Face cache laid out as huggingface_hub
lays it out, an offline refusal that lists the cache, a GGUF file read through transformers.
Nothing here touches the network (HF_HUB_OFFLINE=1 is set by conftest)."""

import json

import pytest
import torch
from hf_families import hf_model
from offline import refusal

from slm_core.errors import SLMError
from slm_core.models import sources
from slm_core.models.load import load_model
from slm_core.models.sources import is_hub_id, list_cached_models

pytest.importorskip("transformers")
IDS = torch.tensor([[3, 17, 42, 8, 99, 5]])
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_cache(root, repo_id: str, family: str = "smollm2", shard: bool = False):
    """models--org--name/{refs/main, snapshots/<commit>/...} as huggingface_hub writes it."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    model = hf_model(family)
    model.save_pretrained(snapshot, max_shard_size="40KB" if shard else "5GB")
    return model, snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


def test_a_cached_hub_id_loads_from_the_cache_with_its_name(hub_cache):
    hf, _ = _fake_cache(hub_cache, "HuggingFaceTB/SmolLM2-tiny")
    loaded = load_model("HuggingFaceTB/SmolLM2-tiny")
    assert loaded.config.model.name == "HuggingFaceTB/SmolLM2-tiny"
    with torch.no_grad():
        assert (loaded.model(IDS) - hf(IDS).logits).abs().max() < 1e-4
    listed = list_cached_models()
    assert [m.repo_id for m in listed] == ["HuggingFaceTB/SmolLM2-tiny"] and listed[0].complete


def test_offline_a_missing_hub_id_fails_at_once_listing_the_cache(hub_cache, monkeypatch, network):
    """Refused from the cache's listing alone: no download is started and no connection attempted."""
    _fake_cache(hub_cache, "Qwen/Qwen2.5-tiny", family="qwen2.5")
    attempts = network
    monkeypatch.setattr(sources, "_download", refusal(attempts, "download"))
    with pytest.raises(SLMError, match=r"not in the Hugging Face cache and HF_HUB_OFFLINE is set.*Qwen/Qwen2.5-tiny"):
        load_model("meta-llama/Llama-3.2-1B")
    assert attempts == []


def test_a_snapshot_missing_a_shard_is_not_taken_as_whole(hub_cache):
    _, snapshot = _fake_cache(hub_cache, "org/sharded", shard=True)
    index = json.loads((snapshot / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    (snapshot / shards[-1]).unlink()  # an interrupted download
    with pytest.raises(SLMError, match=r"org/sharded \(incomplete\)"):
        load_model("org/sharded")


def test_hub_ids_are_told_apart_from_paths_and_runs(tmp_path):
    assert is_hub_id("Qwen/Qwen2.5-0.5B-Instruct") and is_hub_id("org/name@v1.0")
    assert not is_hub_id("just-a-run") and not is_hub_id(str(tmp_path))
    with pytest.raises(SLMError, match="no run named"):
        load_model("no-such-run")


def test_a_gguf_file_loads_through_transformers_gguf_reader(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from slm_core.config import ModelConfig, TokenizerConfig
    from slm_core.models.model import Transformer
    from slm_core.models.tokenizer import build_tokenizer
    from slm_core.post.export_gguf import write_gguf

    monkeypatch.setenv("SLM_MODELS_DIR", str(tmp_path / "models"))
    tokenizer = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=300),
                                ["the cat sat on the mat. " * 30, "a dog ran in the park! " * 30], progress=False)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(family="llama", n_layer=2, n_head=4, n_kv_head=2, d_model=32,
                                    context_length=64, vocab_size=tokenizer.n_vocab)).eval()
    path = write_gguf(model, tokenizer, tmp_path / "tiny.gguf", gguf_type="f32")
    loaded = load_model(path)
    with torch.no_grad():
        assert (loaded.model(IDS) - model(IDS)).abs().max() < 1e-4
    assert loaded.tokenizer.encode("the cat sat") == tokenizer.encode("the cat sat")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF not really")
    with pytest.raises(SLMError, match="broken.gguf"):
        load_model(tmp_path / "broken.gguf")


@pytest.mark.parametrize("error,advice", [("gated", "accept its license.*hf auth login"),
                                          ("missing", "no model 'org/nope'.*check the spelling")])
def test_hub_refusals_say_what_to_do(hub_cache, monkeypatch, error, advice):
    """The Hub's own exception types, raised where the network would answer (no network here)."""
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    response = httpx.Response(401 if error == "gated" else 404, request=httpx.Request("GET", "https://huggingface.co"))
    exc = (GatedRepoError if error == "gated" else RepositoryNotFoundError)("refused", response=response)

    def refuse(*args, **kwargs):
        raise exc

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(SLMError, match=advice):
        load_model("org/nope")
