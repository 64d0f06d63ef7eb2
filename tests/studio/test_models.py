"""Which models the Studio offers (runs and the artifacts made from them) and where new artifacts go."""

import json

from slm_core.system import format_bytes
from studio.models import artifact_target, folder_files, loadable, model_sources, source_label


def make_run(root, name, started, checkpoint=True):
    run = root / name
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "finished", "started_at": started}))
    if checkpoint:
        (run / "checkpoints" / "best").mkdir(parents=True)
        (run / "checkpoints" / "best" / "state.json").write_text('{"step": 3}')
    return run


def make_folder(path, *files):
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_text("x")
    return path


def test_every_run_with_a_checkpoint_is_listed_newest_first_with_its_loadable_artifacts(tmp_path):
    old = make_run(tmp_path, "old", started=1)
    new = make_run(tmp_path, "new", started=2)
    make_run(tmp_path, "empty", started=3, checkpoint=False)  # nothing saved yet: nothing to open
    make_folder(new / "quantized" / "int8", "quantization.json", "model.safetensors")
    make_folder(new / "quantized" / ".int4-g64-tmp1", "model.safetensors")  # an export still being written
    make_folder(new / "export" / "hf", "config.json", "model.safetensors")
    make_folder(new / "export" / "int8-hf", "config.json", "model.safetensors")
    make_folder(new / "export" / "gguf-f16", "tiny-f16.gguf", "Modelfile")  # for llama.cpp, not for us
    make_folder(new / "export" / "onnx", "model.onnx", "tokenizer.json", "tokenizer_config.json")
    make_folder(old / "quantized" / "int4-g32", "quantization.json", "model.safetensors")
    assert model_sources(tmp_path) == [
        ("new", str(new)),
        ("new/quantized/int8", str(new / "quantized" / "int8")),
        ("new/export/hf", str(new / "export" / "hf")),
        ("new/export/int8-hf", str(new / "export" / "int8-hf")),
        ("old", str(old)),
        ("old/quantized/int4-g32", str(old / "quantized" / "int4-g32")),
    ]
    assert model_sources(tmp_path / "missing") == []


def test_a_hugging_face_folder_needs_safetensors_weights_to_be_loadable(tmp_path):
    assert not loadable(make_folder(tmp_path / "a", "config.json", "pytorch_model.bin"))
    assert loadable(make_folder(tmp_path / "b", "config.json", "model-00001-of-00002.safetensors"))
    assert loadable(make_folder(tmp_path / "c", "config.yaml", "model.safetensors"))  # a copied checkpoint
    assert not loadable(tmp_path / "nothing-here")


def test_artifacts_go_beside_the_run_and_exports_of_artifacts_join_the_runs_exports(tmp_path):
    run = make_run(tmp_path, "tiny", started=1)
    assert artifact_target(run, "quantized", "int8") == run / "quantized" / "int8"
    assert artifact_target(run / "checkpoints" / "best", "quantized", "int4-g64") == run / "quantized" / "int4-g64"
    assert artifact_target(run / "quantized" / "int8", "export", "gguf-q8_0") == run / "export" / "int8-gguf-q8_0"
    elsewhere = make_folder(tmp_path / "models" / "mine", "config.json", "model.safetensors")
    assert artifact_target(elsewhere, "quantized", "int8") == tmp_path / "models" / "mine-int8"


def test_labels_sizes_and_file_listings(tmp_path):
    run = make_run(tmp_path, "tiny", started=1)
    assert source_label(tmp_path, str(run / "quantized" / "int8")) == "tiny/quantized/int8"
    assert source_label(tmp_path, "/elsewhere/model") == "/elsewhere/model"
    assert source_label(tmp_path, None) == ""
    folder = make_folder(tmp_path / "out", "small.json")
    (folder / "sub").mkdir()
    (folder / "sub" / "big.bin").write_bytes(b"0" * 3000)
    assert folder_files(folder) == [("sub/big.bin", 3000), ("small.json", 1)]
    assert [format_bytes(n) for n in (None, 12, 2048, 3 * 2**20, 5 * 2**30)] == \
        ["-", "12 B", "2.00 KB", "3.00 MB", "5.00 GB"]
