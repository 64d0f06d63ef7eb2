"""The Hub model browser's engine (slm_core.models.hub): offline it answers at once with the local cache, read by
huggingface_hub's own scan from a cache laid out as the library lays it out; a model_info built by
huggingface_hub's own parsing gives the family, parameters, files and GGUF quantisations."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading

import numpy as np
import pytest
from hf_families import FAMILIES
from huggingface_hub import constants as hub_constants
from huggingface_hub.hf_api import ModelInfo
from safetensors.numpy import save_file

from slm_core.models import hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _real_cache(root, repo_id: str, family: str | None, extra: dict[str, bytes] | None = None) -> None:
    """models--org--name/{blobs/<sha256>, refs/main, snapshots/<commit>/<file> -> ../../blobs/<sha256>}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    staging = root.parent / f"staging-{repo.name}"
    staging.mkdir()
    if family:  # the family's config.json as published (shrunk) and a safetensors file: what the listing reads
        class_name, values = FAMILIES[family]
        config = {"architectures": [class_name], "model_type": class_name.removesuffix("ForCausalLM").lower(),
                  "vocab_size": 256, **values}
        (staging / "config.json").write_text(json.dumps(config))
        save_file({"model.embed_tokens.weight": np.zeros((256, values["hidden_size"]), np.float32)},
                  str(staging / "model.safetensors"))
    for name, data in (extra or {}).items():
        (staging / name).write_bytes(data)
    for file in staging.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.move(file, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    staging.rmdir()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    return tmp_path / "hub"


def test_offline_by_setting_shows_the_cache_without_a_connection(hub_cache, monkeypatch, network):
    _real_cache(hub_cache, "HuggingFaceTB/SmolLM2-tiny", "smollm2")
    _real_cache(hub_cache, "Qwen/Qwen2.5-tiny-GGUF", None, {"qwen2.5-tiny-q4_k_m.gguf": b"GGUF" + bytes(60)})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hits, cached, message = hub.browse("smol")
    assert hits == [] and network == []
    assert "HF_HUB_OFFLINE is set" in message and "Hugging Face cache" in message and "local" in message
    assert [r.repo_id for r in cached] == ["HuggingFaceTB/SmolLM2-tiny"]

    everything = {r.repo_id: r for r in hub.cached_models()}
    smol, gguf = everything["HuggingFaceTB/SmolLM2-tiny"], everything["Qwen/Qwen2.5-tiny-GGUF"]
    assert smol.complete and smol.revisions == ["main"] and smol.gguf == []
    assert smol.size_bytes == sum(f.stat().st_size for f in (smol.path.parent.parent / "blobs").iterdir())
    assert (smol.path / "config.json").is_file() and smol.files >= 2
    assert not gguf.complete and gguf.gguf == ["qwen2.5-tiny-q4_k_m.gguf"] and gguf.size_bytes == 64


def test_no_cache_folder_lists_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "never-made"))
    assert hub.cached_models() == []


def test_an_unreachable_hub_is_offline_after_one_refused_connection(hub_cache, monkeypatch):
    """HF_HUB_OFFLINE unset, HF_ENDPOINT at a loopback port nothing listens on: refused, so nothing is waited on."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    hits, cached, message = hub.browse("qwen", family="qwen2", gguf=True, max_params_b=1.5)
    assert hits == [] and cached == []
    assert message.startswith("Offline:") and f"127.0.0.1:{port} cannot be reached" in message
    with pytest.raises(hub.HubOffline, match="cannot be reached"):
        hub.model_details("Qwen/Qwen2.5-0.5B-Instruct")


def test_a_hub_that_hangs_up_is_asked_once(monkeypatch):
    """A server that accepts and closes: one connection, no retry with back-off."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []

    def hang_up():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    try:
        with pytest.raises(hub.HubOffline):
            hub.search("qwen")
    finally:
        server.close()
    assert accepted == [1]


def _model_info() -> ModelInfo:
    """What GET /api/models/{id}?blobs=true answers, parsed by huggingface_hub itself."""
    lfs = {"sha256": "0" * 64, "pointerSize": 134}
    return ModelInfo(**{
        "id": "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "downloads": 1234, "likes": 56, "gated": False,
        "pipeline_tag": "text-generation", "config": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]},
        "safetensors": {"parameters": {"BF16": 494_032_768}, "total": 494_032_768},
        "gguf": {"total": 494_032_768, "architecture": "qwen2", "context_length": 32768},
        "siblings": [
            {"rfilename": "config.json", "size": 659},
            {"rfilename": "model-00001-of-00002.safetensors", "size": 600_000_000, "lfs": {**lfs, "size": 600_000_000}},
            {"rfilename": "model-00002-of-00002.safetensors", "lfs": {**lfs, "size": 388_000_000}},
            {"rfilename": "qwen2.5-0.5b-instruct-q4_k_m.gguf", "size": 491_400_032},
            {"rfilename": "qwen2.5-0.5b-instruct-q8_0.gguf", "size": 675_710_816},
            {"rfilename": "qwen2.5-0.5b-instruct-fp16.gguf", "size": 1_270_000_000},
            {"rfilename": "Qwen2.5-0.5B-Instruct-IQ2_XXS.gguf", "size": 200_000_000},
        ]})


def test_model_info_gives_family_parameters_files_and_quantisations():
    model = hub.describe(_model_info())
    assert (model.repo_id, model.family, model.parameters) == ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2", 494_032_768)
    assert (model.downloads, model.likes, model.gated) == (1234, 56, False)
    assert model.safetensors_bytes == 988_000_000  # a size only in the LFS record counts too
    assert hub.weight_choices(model) == [("safetensors", 988_000_000), ("GGUF Q4_K_M", 491_400_032),
                                         ("GGUF Q8_0", 675_710_816), ("GGUF F16", 1_270_000_000),
                                         ("GGUF IQ2_XXS", 200_000_000)]


def test_gguf_quantisation_names():
    assert hub.gguf_quant("Llama-3.2-1B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert hub.gguf_quant("model-bf16.gguf") == "BF16"
    assert hub.gguf_quant("smollm2-135m-instruct-q8_0.gguf") == "Q8_0"
    assert hub.gguf_quant("qwen2.5-0.5b-instruct-fp16.gguf") == "F16"
    assert hub.gguf_quant("weights.gguf") is None


def test_fit_follows_the_free_memory():
    assert hub.weights_fit(1) is True
    assert hub.weights_fit(1 << 60) is False
    assert hub.weights_fit(None) is None
