"""The model picker lists Hugging Face cache models by Hub id and describes a model without torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_cached_models_are_listed_and_described_without_importing_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                      "max_position_embeddings": 8192}))
    save_file({"a": torch.zeros(3, 4, dtype=torch.bfloat16), "b": torch.zeros(5, dtype=torch.bfloat16)},
              str(snapshot / "model.safetensors"))
    (tmp_path / "hub" / "models--org--broken" / "snapshots" / "x").mkdir(parents=True)  # no config: not a model
    code = ("import json, sys; from studio.model_picker import hub_choices, describe_model; "
            "print(json.dumps([hub_choices(), describe_model(sys.argv[1]), 'torch' in sys.modules]))")
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, str(snapshot)], capture_output=True, text=True, env=env,
                         check=True, cwd=REPO)
    choices, info, torch_imported = json.loads(out.stdout)
    assert choices == [["org/tiny (Hugging Face cache)", "org/tiny"]]
    assert info["parameters"] == 17 and info["dtype"] == "bf16" and info["context"] == 8192
    assert info["family"] == "LlamaForCausalLM" and info["disk_bytes"] == (snapshot / "model.safetensors").stat().st_size
    assert not torch_imported


def test_the_chat_session_talks_to_a_hub_model_in_its_own_template(tmp_path):
    """A Llama-2-chat-shaped folder (real Llama 2 tokenizer + the published template): the session renders
    the conversation with the template, whose own rules (roles must alternate) then apply."""
    import shutil
    import sys

    pytest.importorskip("transformers")
    sys.path.insert(0, str(REPO / "tests"))
    from hf_families import LLAMA2_CHAT, hf_model, vocab_folder

    from slm_core.errors import SLMError
    from studio.chat_session import ChatSession

    folder = tmp_path / "llama2-chat"
    folder.mkdir()
    for path in vocab_folder("llama-spm").iterdir():
        shutil.copy(path, folder / path.name)
    (folder / "chat_template.jinja").write_text(LLAMA2_CHAT)
    hf_model("llama-2", vocab_size=32000).save_pretrained(folder)
    session = ChatSession(tmp_path / "runs", backend="native")
    settings = {"max_new_tokens": 3, "temperature": 0.0}
    stats = {}
    history = [{"role": "system", "content": "Be brief."}]
    "".join(session.stream("Hello", history, str(folder), "best", settings, stats))
    assert stats["tokens"] >= 1 and "own chat template" in session.describe()
    with pytest.raises(SLMError, match="roles must alternate"):  # the template itself refused: it was used
        "".join(session.stream("Hello", [{"role": "user", "content": "a"}], str(folder), "best", settings, {}))
