"""Lineage: a chain made by the real commands reads back as the right tree (text and JSON), deleting a base with
descendants is refused with the list, a killed and resumed run keeps its record, folders made before records existed
are inferred, and exports carry the Hub's model tree (model card front matter) and llama.cpp's base-model keys."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slm_core.cli import main
from slm_core.run import lineage, lineage_hub, lineage_tree

TINY = ["tokenizer.kind=char", "data.max_chars=200000", "model.context_length=64", "model.vocab_size=null",
        "model.n_layer=1", "train.batch_size=8", "train.precision=fp32", "train.eval_batches=2",
        "train.sample_tokens=4", "train.warmup_steps=1"]
HUB_BASE = "HuggingFaceTB/SmolLM2-135M"


def sets(*overrides: str) -> list[str]:
    return [arg for item in (*TINY, *overrides) for arg in ("--set", item)]


def edges(doc: dict) -> set:
    names = {n["id"]: n["name"] for n in doc["nodes"]}
    return {(names[e["from"]], e["relation"], names[e["to"]]) for e in doc["edges"]}


@pytest.fixture
def runs_dir() -> Path:
    return Path(os.environ["SLM_RUNS_DIR"])


@pytest.mark.slow
def test_a_chain_made_by_the_real_commands_reads_back_as_its_tree(runs_dir, tiny_char_run, capsys):
    shutil.copytree(tiny_char_run, runs_dir / "base")  # the session's pretrained tiny model: pretrain
    assert main(["train", "--preset", "quickstart-cpu", "--mode", "lora", "--name", "lora", "--quiet",
                 *sets("train.init_from=base", "train.max_steps=2", "train.eval_interval=2",
                       "train.ckpt_interval=2")]) == 0
    assert main(["export", "lora", "--format", "hf"]) == 0  # a LoRA exported whole: a merge
    merged = runs_dir / "lora" / "export" / "hf"
    assert main(["quantize", str(merged), "--method", "int8"]) == 0
    assert main(["export", str(merged.with_name("hf-int8")), "--format", "gguf", "--gguf-type", "f32"]) == 0
    assert main(["eval", "base", str(merged.with_name("hf-int8")), "--card", "--max-tokens", "200"]) == 0
    capsys.readouterr()

    assert main(["lineage", "lora/export/hf-int8", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    chain = {("base", "adapter_of", "lora"), ("lora", "merge_of", "lora/export/hf"),
             ("lora/export/hf", "quantized_from", "lora/export/hf-int8"),
             ("lora/export/hf-int8", "exported_from", "lora/export/hf-int8-gguf-f32")}
    assert chain <= edges(doc)
    kinds = {n["name"]: n["kind"] for n in doc["nodes"]}
    assert [kinds[k] for k in ("base", "lora", "lora/export/hf", "lora/export/hf-int8")] == \
        ["pretrain", "lora", "merge", "quantized"]
    int8 = next(n for n in doc["nodes"] if n["name"] == "lora/export/hf-int8")
    assert int8["scores"]["ppl"] > 1 and int8["size_bytes"] > 0 and not int8["inferred"]
    cards = [n for n in doc["nodes"] if n["kind"] == "report"]
    assert len(cards) == 1 and cards[0]["parents"][0]["relation"] == "evaluated"  # base's card is not below int8

    assert main(["runs", "--tree"]) == 0
    tree = capsys.readouterr().out
    assert tree.splitlines()[0].startswith("base  [pretrain]") and tree.count("evaluated: ") == 2
    assert "exported_from: lora/export/hf-int8-gguf-f32" in tree and "ppl " in tree

    front = _model_card(merged)
    assert front.base_model == "base" and front.base_model_relation == "merge"
    assert front.library_name == "transformers"
    assert "## Lineage" in (merged / "README.md").read_text()
    _assert_gguf_base(next((merged.with_name("hf-int8-gguf-f32")).glob("*.gguf")), "lora/export/hf")

    assert main(["lineage", "base", "--delete", "--yes"]) == 2  # the LoRA's only base: refused, named
    assert "only base of lora" in capsys.readouterr().err and (runs_dir / "base").is_dir()


def _model_card(folder: Path):
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md").data


def _assert_gguf_base(path: Path, name: str, repo_url: str | None = None) -> None:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def text(key):
        field = fields[key]
        return bytes(field.parts[field.data[0]]).decode()

    assert int(fields["general.base_model.count"].parts[-1][0]) == 1
    assert text("general.base_model.0.name") == name
    if repo_url:
        assert text("general.base_model.0.repo_url") == repo_url


@pytest.mark.slow
def test_a_killed_run_keeps_its_lineage_and_a_resume_keeps_the_first_record(runs_dir, tiny_char_run):
    shutil.copytree(tiny_char_run, runs_dir / "base")
    command = [sys.executable, "-m", "slm_core", "train", "--preset", "quickstart-cpu", "--mode", "finetune",
               "--name", "tuned", "--quiet", *sets("train.init_from=base", "train.max_steps=100000",
                                                   "train.eval_interval=100000", "train.ckpt_interval=2")]
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = runs_dir / "tuned" / "checkpoints" / "latest"
    deadline = time.monotonic() + 180
    while not latest.is_dir() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    first = json.loads((runs_dir / "tuned" / "lineage.json").read_text())
    graph = lineage.scan(runs_dir)
    assert {(p["id"], p["relation"]) for p in graph.find("tuned")["parents"]} == {(str(runs_dir / "base"), "init_from")}

    assert main(["resume", "tuned", "--quiet", "--set", "train.max_steps=4"]) == 0
    assert json.loads((runs_dir / "tuned" / "lineage.json").read_text()) == first
    node = lineage.scan(runs_dir).find("tuned")
    assert node["kind"] == "finetune" and node["state"] == "finished" and node["parents"][0]["relation"] == "init_from"


# ---- folders made before records existed (written here as older versions wrote them) -------------------------

def old_run(root: Path, name: str, mode: str = "pretrain", init_from=None, teacher=None, shrink=None,
            best: float = 2.0, source: str = "builtin", state: str = "finished") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    config = {"train": {"mode": mode, "init_from": init_from}, "data": {"source": source},
              "distill": {"teacher": teacher, "shrink_layers": shrink}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "status.json").write_text(json.dumps({"state": state, "best_val_loss": best, "mode": mode,
                                                    "parent": init_from or teacher, "started_at": 1.0}))
    (folder / "data.json").write_text(json.dumps({"fingerprint": f"fp-{name}", "source": source}))
    (folder / "checkpoints" / "best").mkdir(parents=True)
    (folder / "checkpoints" / "best" / "model.safetensors").write_bytes(b"0" * 1000)
    return folder


def old_artifact(folder: Path, meta_file: str, created: float, **meta) -> Path:
    folder.mkdir(parents=True)
    (folder / meta_file).write_text(json.dumps(dict(meta, created_at=created)))
    (folder / "model.safetensors").write_bytes(b"0" * 500)
    return folder


def old_forest(root: Path) -> None:
    old_run(root, "pre")
    old_run(root, "lora-a", "lora", init_from="pre", best=1.5)
    (root / "lora-a" / "checkpoints" / "best" / "adapter").mkdir()
    old_run(root, "lora-b", "lora", init_from=str(root / "pre" / "checkpoints" / "best"), best=1.7)
    (root / "lora-b" / "checkpoints" / "best" / "adapter").mkdir()
    old_run(root, "student", "distill", teacher=HUB_BASE, shrink=2, source="roneneldan/TinyStories")
    old_artifact(root / "lora-a" / "quantized" / "int8", "quantization.json", 10.0, source="lora-a", method="int8")
    old_artifact(root / "lora-a" / "export" / "hf", "export.json", 11.0, source="lora-a", format="hf")
    old_artifact(root / "lora-a" / "export" / "gguf-old", "export.json", 12.0, source="lora-a", format="gguf",
                 gguf_type="f16")
    old_artifact(root / "lora-a" / "export" / "gguf-new", "export.json", 13.0, source="lora-a", format="gguf",
                 gguf_type="f16")
    (root / "lora-a" / "evals").mkdir()
    (root / "lora-a" / "evals" / "report-1.json").write_text(json.dumps({"ppl_own": 4.0, "tasks": {
        "slm_arithmetic": {"exact_match": 0.5}}}))


def test_old_folders_without_records_are_inferred(runs_dir, tmp_path):
    old_forest(runs_dir)
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / "0123abc"  # a cache entry
    local = tmp_path / "my-hf-model"  # a local HF folder
    for folder in (snapshot, local):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    old_run(runs_dir, "shrunk", "distill", teacher=str(snapshot), shrink=1)
    old_run(runs_dir, "tuned-local", "finetune", init_from=str(local))
    graph = lineage.scan(runs_dir)
    doc = graph.to_json()
    assert {("pre", "adapter_of", "lora-a"), ("pre", "adapter_of", "lora-b"),  # a checkpoint path is its run
            ("lora-a", "quantized_from", "lora-a/quantized/int8"), ("lora-a", "merge_of", "lora-a/export/hf"),
            ("lora-a", "merge_of", "lora-a/export/gguf-new"),  # a LoRA's GGUF is merged
            (HUB_BASE, "teacher", "student"), ("Qwen/Qwen2.5-0.5B", "teacher", "shrunk"),
            ("my-hf-model", "init_from", "tuned-local")} <= edges(doc)
    assert graph.find("my-hf-model")["kind"] == "folder" and graph.find("Qwen/Qwen2.5-0.5B")["kind"] == "hub"
    hub = graph.find(HUB_BASE)
    assert hub["kind"] == "hub" and hub["id"] == f"hub:{HUB_BASE}"
    student = graph.find("student")
    assert student["kind"] == "shrink" and student["inferred"] and student["data"]["fingerprint"] == "fp-student"
    assert graph.find("lora-a")["scores"] == {"val_loss": 1.5, "ppl": 4.0, "arithmetic": 0.5}
    assert lineage.infer(runs_dir / "lora-a")["parents"][0]["path"] == str(runs_dir / "pre")


def test_a_damaged_record_is_named_moved_aside_and_inferred_instead(runs_dir):
    old_forest(runs_dir)
    (runs_dir / "lora-b" / "lineage.json").write_text('{"kind": "lo')
    graph = lineage.scan(runs_dir)
    assert any("lora-b" in w and "damaged" in w for w in graph.warnings)
    assert list((runs_dir / "lora-b").glob("lineage.json.damaged-*"))
    assert graph.find("lora-b")["parents"][0]["relation"] == "adapter_of"


def test_deleting_a_base_is_refused_with_what_depends_on_it_unless_confirmed(runs_dir, capsys):
    old_forest(runs_dir)
    graph = lineage.scan(runs_dir)
    plan = lineage_tree.deletion_plan(graph, graph.find("pre")["id"])
    assert plan["orphans"] == ["lora-a", "lora-b"] and "lora-a/export/hf" in plan["descendants"]
    assert main(["lineage", "pre", "--delete", "--yes"]) == 2
    assert "only base of lora-a, lora-b" in capsys.readouterr().err and (runs_dir / "pre").is_dir()

    assert main(["lineage", "lora-a", "--delete"]) == 0  # its own artifacts go with it: nothing outside is orphaned
    out = capsys.readouterr().out
    assert "lora-a/quantized/int8" in out and "nothing deleted" in out and (runs_dir / "lora-a").is_dir()
    assert main(["lineage", "lora-a", "--delete", "--yes"]) == 0 and not (runs_dir / "lora-a").exists()
    assert main(["lineage", "pre", "--delete", "--orphan", "--yes"]) == 0 and not (runs_dir / "pre").exists()
    assert "pre (gone)" in lineage_tree.render(lineage.scan(runs_dir))  # the orphan still names its base


def test_cleanup_lists_superseded_and_dominated_artifacts_and_deletes_only_when_confirmed(runs_dir, capsys):
    old_forest(runs_dir)
    (runs_dir / "pre" / "checkpoints" / "best.prev").mkdir()
    (runs_dir / "pre" / "checkpoints" / "best.prev" / "model.safetensors").write_bytes(b"0" * 300)
    found = {c["name"]: c for c in lineage_tree.cleanup_candidates(lineage.scan(runs_dir))}
    assert set(found) == {"lora-a/export/gguf-old", "lora-b", "pre/checkpoints/best.prev"}
    assert "gguf-new" in found["lora-a/export/gguf-old"]["reason"] and found["lora-b"]["reason"].startswith("lora-a")
    assert found["lora-a/export/gguf-old"]["frees_bytes"] >= 500

    assert main(["lineage", "--cleanup"]) == 0
    assert "nothing deleted" in capsys.readouterr().out and (runs_dir / "lora-a" / "export" / "gguf-old").exists()
    assert main(["lineage", "--cleanup", "--yes"]) == 0
    assert not (runs_dir / "lora-a" / "export" / "gguf-old").exists() and not (runs_dir / "lora-b").exists()
    assert (runs_dir / "lora-a" / "export" / "gguf-new").exists() and (runs_dir / "pre" / "checkpoints" / "best").exists()
    assert not (runs_dir / "pre" / "checkpoints" / "best.prev").exists()


def test_the_cli_prints_the_slice_through_one_node_and_names_an_unknown_one(runs_dir, capsys):
    old_forest(runs_dir)
    assert main(["lineage", "lora-a/quantized/int8"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("pre  [pretrain]") and "◀" in out and "lora-b" not in out
    assert main(["lineage", "nope"]) == 2 and "slm runs --tree" in capsys.readouterr().err


def test_an_export_of_a_hub_finetune_carries_the_hub_model_tree(runs_dir, tmp_path):
    from slm_core.post.report_card import write_model_card

    old_forest(runs_dir)
    tuned = old_run(runs_dir, "tuned", "finetune", init_from=HUB_BASE, source="roneneldan/TinyStories:default")
    tree = lineage_hub.export_lineage("tuned", "hf", tuned / "export" / "hf", runs_dir)
    assert tree["base_model_relation"] == "finetune" and tree["datasets"] == ["roneneldan/TinyStories"]
    write_model_card(tmp_path, None, "tuned", lineage=tree)
    front = _model_card(tmp_path)
    assert front.base_model == HUB_BASE and front.base_model_relation == "finetune"
    assert front.datasets == ["roneneldan/TinyStories"]
    assert lineage_hub.gguf_base_models(tree)[0]["repo_url"] == f"https://huggingface.co/{HUB_BASE}"

    shrunk = lineage_hub.export_lineage("student", "gguf", runs_dir / "student" / "export" / "gguf", runs_dir)
    assert shrunk["base_model_relation"] == "finetune" and shrunk["bases"] == [{"name": HUB_BASE, "hub": HUB_BASE}]
    quantized = lineage_hub.export_lineage(str(runs_dir / "lora-a" / "quantized" / "int8"), "gguf",
                                           runs_dir / "lora-a" / "quantized" / "int8-gguf", runs_dir)
    assert quantized["base_model_relation"] == "quantized" and quantized["bases"][0]["name"] == "lora-a"
    adapter = lineage_hub.export_lineage("lora-a", "gguf-lora", runs_dir / "lora-a" / "export" / "gl", runs_dir)
    assert adapter["base_model_relation"] == "adapter" and adapter["bases"][0]["name"] == "pre"
