"""The bad-input matrix: the CLI, the Python API, recipes and data files, each fed a value a person
could plausibly get wrong.

Every case must end the same way: one line naming the value (exit code 2 from the CLI, SLMError from
the API), no traceback, and nothing previously saved changed (the module's trained run hashes the
same before and after; no new run folder appears unless it is a failed run that records the error).
One tiny run is trained once per module and reused; CLI cases run in-process (`cli.main`), a few
through `python -m slm_core` to prove the same in a real process.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from slm_core.cli import main
from slm_core.errors import SLMError
from slm_core.run import runs

REPO = Path(__file__).resolve().parents[1]

# A 1-layer, 32-wide char model: trains and loads in a second or two. Context 128, so a text of ~100
# tokens is short of one window yet long enough to score (the warning case).
TINY = ["data.max_chars=20000", "tokenizer.kind=char", "model.n_layer=1", "model.d_model=32", "model.n_head=2",
        "model.context_length=128", "train.max_steps=1", "train.eval_interval=1", "train.ckpt_interval=1",
        "train.eval_batches=1", "train.batch_size=2", "train.sample_tokens=4", "train.precision=fp32",
        "train.warmup_steps=0"]
TINY_SETS = [x for item in TINY for x in ("--set", item)]


def _write_bad_files(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "malformed.yaml").write_text("model: [1, 2\ntrain:\n  lr: 0.1\n")
    (d / "list.yaml").write_text("- model\n- train\n")
    (d / "unknown_section.yaml").write_text("optimizer: {lr: 0.1}\n")
    (d / "section_scalar.yaml").write_text("train: 5\n")
    (d / "wrong_type.yaml").write_text("train:\n  max_steps: many\n")
    (d / "unknown_field.yaml").write_text("train:\n  steps: 5\n")
    (d / "unknown_model.yaml").write_text("model: no-such-model\n")
    (d / "binary.yaml").write_bytes(bytes(range(256)) * 8)
    (d / "empty.jsonl").write_text("")
    with open(d / "bad_line.jsonl", "w") as f:  # the bad line is 1501, far past datasets' first parse block
        for i in range(1500):
            f.write(json.dumps({"text": f"story {i}: the cat sat on the mat."}) + "\n")
        f.write('{"text": "fine so far"} and then trailing garbage\n')
        f.write(json.dumps({"text": "after"}) + "\n")
    (d / "list_line.jsonl").write_text('{"text": "a"}\n[1, 2]\n')
    (d / "empty.txt").write_text("")
    (d / "binary.txt").write_bytes(bytes(range(256)) * 40)
    (d / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
    (d / "no_column.csv").write_text("a,b\n1,2\n3,4\n")
    (d / "fake.parquet").write_text("this is not a parquet file")
    (d / "short.txt").write_text("hi there")
    (d / "a_file").write_text("not a folder")
    (d / "empty_folder").mkdir(exist_ok=True)
    (d / "not_a_model").mkdir(exist_ok=True)
    (d / "not_a_model" / "README.md").write_text("no model here")
    (d / "hf_corrupt").mkdir(exist_ok=True)
    (d / "hf_corrupt" / "config.json").write_text('{"model_type": "llama", ')


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One trained tiny run in its own runs folder, plus a folder of bad files."""
    from slm_core.config import load_recipe
    from slm_core.train.loop import train

    base = tmp_path_factory.mktemp("bad-inputs")
    cache = tmp_path_factory.getbasetemp() / "slm-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLM_CACHE_DIR", str(cache))
        result = train(load_recipe("quickstart-cpu", TINY), base / "runs" / "tiny", progress=False)
    assert result["state"] == "finished"
    _write_bad_files(base / "data")
    return SimpleNamespace(runs=base / "runs", data=base / "data", tiny=base / "runs" / "tiny")


def tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own refusals (unknown choice, not an int) exit 2
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _fill(argv: list[str], w) -> list[str]:
    return [a.format(runs=w.runs, data=w.data, tiny=w.tiny) for a in argv]


def T(*extra: str) -> list[str]:
    """`slm train` on the tiny settings in the module's runs folder, plus the case's own arguments."""
    return ["train", "--runs-dir", "{runs}", "--quiet", *TINY_SETS, *extra]


# (case id, argv, a word the one-line error must contain, a failed run folder may be left behind)
CLI_CASES = [
    # recipes (--config / --preset)
    ("yaml-malformed", ["train", "--config", "{data}/malformed.yaml", "--runs-dir", "{runs}"], "line 2", False),
    ("yaml-top-level-list", ["train", "--config", "{data}/list.yaml", "--runs-dir", "{runs}"], "list", False),
    ("yaml-missing-config", ["train", "--config", "{data}/nope.yaml", "--runs-dir", "{runs}"], "not found", False),
    ("yaml-config-is-folder", ["train", "--config", "{data}", "--runs-dir", "{runs}"], "folder", False),
    ("yaml-binary", ["train", "--config", "{data}/binary.yaml", "--runs-dir", "{runs}"], "utf-8", False),
    ("yaml-unknown-section", ["train", "--config", "{data}/unknown_section.yaml", "--runs-dir", "{runs}"],
     "optimizer", False),
    ("yaml-section-not-mapping", ["train", "--config", "{data}/section_scalar.yaml", "--runs-dir", "{runs}"],
     "train", False),
    ("yaml-wrong-type", ["train", "--config", "{data}/wrong_type.yaml", "--runs-dir", "{runs}"],
     "train.max_steps", False),
    ("yaml-unknown-field", ["train", "--config", "{data}/unknown_field.yaml", "--runs-dir", "{runs}"], "steps", False),
    ("yaml-unknown-model-preset", ["train", "--config", "{data}/unknown_model.yaml", "--runs-dir", "{runs}"],
     "no-such-model", False),
    ("unknown-preset", ["train", "--preset", "no-such-recipe", "--runs-dir", "{runs}"], "no-such-recipe", False),
    ("missing-preset-file", ["train", "--preset", "{data}/nope.yaml", "--runs-dir", "{runs}"], "not found", False),
    # --set overrides: syntax, names, types, ranges
    ("set-no-equals", T("--set", "bogus"), "section.key=value", False),
    ("set-unknown-section", T("--set", "optimizer.lr=1"), "optimizer", False),
    ("set-unknown-key", T("--set", "train.bogus=1"), "bogus", False),
    ("set-wrong-type", T("--set", "train.lr=abc"), "train.lr", False),
    ("set-lr-zero", T("--set", "train.lr=0"), "train.lr", False),
    ("set-lr-negative", T("--set", "train.lr=-1e-3"), "train.lr", False),
    ("set-lr-nan", T("--set", "train.lr=nan"), "train.lr", False),
    ("set-batch-zero", T("--set", "train.batch_size=0"), "train.batch_size", False),
    ("set-steps-fraction", T("--set", "train.max_steps=1.5"), "train.max_steps", False),
    ("set-heads-not-dividing", T("--set", "model.n_head=3"), "heads", False),
    ("set-layers-zero", T("--set", "model.n_layer=0"), "model.n_layer", False),
    ("set-dropout-range", T("--set", "model.dropout=1.5"), "model.dropout", False),
    ("set-beta-range", T("--set", "train.beta1=1.0"), "train.beta1", False),
    ("set-bool", T("--set", "train.compile=maybe"), "train.compile", False),
    ("set-tokenizer-kind", T("--set", "tokenizer.kind=word"), "tokenizer.kind", False),
    ("set-val-fraction", T("--set", "data.val_fraction=0.9"), "data.val_fraction", False),
    ("set-lora-rank", T("--set", "lora.r=0"), "lora.r", False),
    ("set-distill-alpha", T("--set", "distill.alpha=2"), "distill.alpha", False),
    ("set-device-unknown", T("--set", "train.device=tpu"), "train.device", False),
    ("set-device-absent", T("--set", "train.device=cuda:63"), "cuda:63", False),
    ("mode-needs-base", T("--mode", "finetune"), "train.init_from", False),
    # where runs live, run names, base models and teachers (resolved before a run folder exists)
    ("runs-dir-is-file-train", ["train", "--runs-dir", "{data}/a_file", *TINY_SETS], "is a file", False),
    ("runs-dir-is-file-list", ["runs", "--runs-dir", "{data}/a_file"], "is a file", False),
    ("runs-dir-unwritable", ["train", "--runs-dir", "/proc/slm-runs", *TINY_SETS], "cannot write", False),
    ("run-name-invalid", T("--name", "bad name!"), "run name", False),
    ("run-name-taken", T("--name", "tiny"), "already exists", False),
    ("init-from-unknown", T("--set", "train.mode=finetune", "--set", "train.init_from=nope"), "nope", False),
    ("teacher-unknown", T("--set", "train.mode=distill", "--set", "distill.teacher=nope"), "distill.teacher", False),
    ("init-from-file", T("--set", "train.mode=finetune", "--set", "train.init_from={data}/a_file"), "is a file",
     False),
    ("init-from-no-model", T("--set", "train.mode=finetune", "--set", "train.init_from={data}/not_a_model"),
     "holds no model", False),
    ("tokenizer-path-missing", T("--set", "tokenizer.path={data}/nope"), "tokenizer.path", False),
    # data files
    ("data-missing-file", T("--set", "data.source={data}/missing.txt"), "not found", False),
    ("data-unknown-builtin", T("--set", "data.source=builtin:nope"), "builtin:nope", False),
    ("data-empty-text", T("--set", "data.source={data}/empty.txt"), "no text", True),
    ("data-empty-jsonl", T("--set", "data.source={data}/empty.jsonl"), "file is empty", True),
    ("data-jsonl-bad-line", T("--set", "data.source={data}/bad_line.jsonl"), "line 1501", True),
    ("data-jsonl-list-line", T("--set", "data.source={data}/list_line.jsonl"), "line 2", True),
    ("data-csv-no-column", T("--set", "data.source={data}/no_column.csv", "--set", "data.text_column=text"),
     "column", True),
    ("data-fake-parquet", T("--set", "data.source={data}/fake.parquet"), "parquet", True),
    ("data-binary-text", T("--set", "data.source={data}/binary.txt"), "binary", True),
    ("data-not-utf8", T("--set", "data.source={data}/latin1.txt"), "utf-8", True),
    ("data-empty-folder", T("--set", "data.source={data}/empty_folder"), "empty_folder", True),
    ("data-shorter-than-context", T("--set", "data.source={data}/short.txt"), "context_length", True),
    # generate
    ("gen-negative-max-new-tokens", ["generate", "tiny", "--runs-dir", "{runs}", "--max-new-tokens", "-1"],
     "max_new_tokens", False),
    ("gen-negative-top-k", ["generate", "tiny", "--runs-dir", "{runs}", "--top-k", "-1"], "top_k", False),
    ("gen-repetition-penalty-zero", ["generate", "tiny", "--runs-dir", "{runs}", "--repetition-penalty", "0"],
     "repetition_penalty", False),
    ("gen-negative-temperature", ["generate", "tiny", "--runs-dir", "{runs}", "--temperature", "-1"],
     "temperature", False),
    ("gen-nan-temperature", ["generate", "tiny", "--runs-dir", "{runs}", "--temperature", "nan"],
     "temperature", False),
    ("gen-top-p-zero", ["generate", "tiny", "--runs-dir", "{runs}", "--top-p", "0"], "top_p", False),
    ("gen-top-p-above-one", ["generate", "tiny", "--runs-dir", "{runs}", "--top-p", "1.5"], "top_p", False),
    ("gen-device-unknown", ["generate", "tiny", "--runs-dir", "{runs}", "--device", "tpu"], "tpu", False),
    ("gen-max-new-tokens-not-int", ["generate", "tiny", "--runs-dir", "{runs}", "--max-new-tokens", "abc"],
     "--max-new-tokens", False),
    ("gen-unknown-run", ["generate", "nope", "--runs-dir", "{runs}"], "nope", False),
    ("gen-folder-without-model", ["generate", "{data}/not_a_model", "--runs-dir", "{runs}"], "holds no model",
     False),
    ("gen-file-as-model", ["generate", "{data}/a_file", "--runs-dir", "{runs}"], "is a file", False),
    ("gen-hf-corrupt-config", ["generate", "{data}/hf_corrupt", "--runs-dir", "{runs}"], "config.json", False),
    ("gen-runs-dir-is-file", ["generate", "tiny", "--runs-dir", "{data}/a_file"], "is a file", False),
    # eval
    ("eval-negative-stride", ["eval", "tiny", "--runs-dir", "{runs}", "--stride", "-4"], "stride", False),
    ("eval-zero-stride", ["eval", "tiny", "--runs-dir", "{runs}", "--stride", "0"], "stride", False),
    ("eval-stride-above-context", ["eval", "tiny", "--runs-dir", "{runs}", "--stride", "10000"], "stride", False),
    ("eval-zero-max-tokens", ["eval", "tiny", "--runs-dir", "{runs}", "--max-tokens", "0"], "max_tokens", False),
    ("eval-data-too-short", ["eval", "tiny", "--runs-dir", "{runs}", "--data", "{data}/short.txt"], "too few",
     False),
    ("eval-data-missing", ["eval", "tiny", "--runs-dir", "{runs}", "--data", "{data}/missing.txt"], "not found",
     False),
    ("eval-unknown-run", ["eval", "nope", "--runs-dir", "{runs}"], "nope", False),
    # quantize / export
    ("quantize-unknown-method", ["quantize", "tiny", "--runs-dir", "{runs}", "--method", "int3"], "int3", False),
    ("quantize-bad-group-size", ["quantize", "tiny", "--runs-dir", "{runs}", "--method", "int4",
                                 "--group-size", "7"], "--group-size", False),
    ("quantize-zero-eval-tokens", ["quantize", "tiny", "--runs-dir", "{runs}", "--eval-tokens", "0"],
     "--eval-tokens", False),
    ("quantize-unknown-run", ["quantize", "nope", "--runs-dir", "{runs}"], "nope", False),
    ("quantize-out-not-empty", ["quantize", "tiny", "--runs-dir", "{runs}", "--out", "{data}/not_a_model"],
     "already exists", False),
    ("export-unknown-format", ["export", "tiny", "--runs-dir", "{runs}", "--format", "zip"], "zip", False),
    ("export-unknown-run", ["export", "nope", "--runs-dir", "{runs}"], "nope", False),
    ("export-out-not-empty", ["export", "tiny", "--runs-dir", "{runs}", "--format", "hf", "--out",
                              "{data}/not_a_model"], "already exists", False),
    # resume: a bad override must not touch the run it names
    ("resume-unknown-run", ["resume", "nope", "--runs-dir", "{runs}"], "nope", False),
    ("resume-not-a-run", ["resume", "{data}/empty_folder", "--runs-dir", "{runs}"], "not a run", False),
    ("resume-bad-override", ["resume", "tiny", "--runs-dir", "{runs}", "--set", "train.lr=0"], "train.lr", False),
    ("resume-unknown-key", ["resume", "tiny", "--runs-dir", "{runs}", "--set", "train.bogus=1"], "bogus", False),
    ("unknown-command", ["frobnicate"], "frobnicate", False),
]


def _new_entries(before: set, runs_root: Path) -> set:
    return {p.name for p in runs_root.iterdir()} - before


@pytest.mark.parametrize("argv, word, may_leave_failed_run", [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_bad_input(world, capsys, argv, word, may_leave_failed_run):
    before_hash, before_runs = tree_hash(world.tiny), {p.name for p in world.runs.iterdir()}
    code, out, err = run_cli(_fill(argv, world), capsys)
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err  # one line says what is wrong and what to do
    assert word.lower() in errors[0].lower(), errors[0]
    assert tree_hash(world.tiny) == before_hash, "the existing run was modified"
    for name in _new_entries(before_runs, world.runs):
        status = runs.read_status(world.runs / name)
        assert may_leave_failed_run and status.get("state") == "failed" and status.get("error"), (name, status)


# ---- the Python API ------------------------------------------------------------------------------

def _loaded(w):
    from slm_core.models.load import load_model

    return load_model(w.tiny)


def _train(config_or_overrides, run_dir, **kwargs):
    from slm_core.config import load_recipe
    from slm_core.train.loop import train

    config = (load_recipe("quickstart-cpu", TINY + config_or_overrides) if isinstance(config_or_overrides, list)
              else config_or_overrides)
    return train(config, run_dir, progress=False, **kwargs)


def _generate(**kwargs):
    def call(w):
        from slm_core.infer.generate import complete

        return complete(_loaded(w), "the cat", seed=0, **{"max_new_tokens": 4, **kwargs})
    return call


def _perplexity(**kwargs):
    def call(w):
        from slm_core.post.evaluate import perplexity

        return perplexity(_loaded(w), **kwargs)
    return call


def _quantize(method, group_size=64):
    def call(w):
        from slm_core.models.quantized import quantize_model

        return quantize_model(_loaded(w).model, method, group_size)
    return call


def _export(fmt):
    def call(w):
        from slm_core.post.export import export_model

        loaded = _loaded(w)
        return export_model(loaded.model, loaded.tokenizer, loaded.config, w.runs / "export-out", fmt)
    return call


def _load(source, **kwargs):
    def call(w):
        from slm_core.models.load import load_model

        return load_model(str(source).format(runs=w.runs, data=w.data, tiny=w.tiny), **kwargs)
    return call


def _config(builder):
    def call(w):
        from slm_core import config

        return builder(config, w)
    return call


# (case id, call(world), a word the error must contain)
API_CASES = [
    ("api-load-unknown-run", _load("nope"), "nope"),
    ("api-load-bad-tag", _load("{tiny}", tag="worst"), "worst"),
    ("api-load-bad-device", _load("{tiny}", device="tpu"), "tpu"),
    ("api-load-file", _load("{data}/a_file"), "is a file"),
    ("api-load-hf-corrupt", _load("{data}/hf_corrupt"), "config.json"),
    ("api-generate-negative-max-new", _generate(max_new_tokens=-5), "max_new_tokens"),
    ("api-generate-negative-top-k", _generate(top_k=-1), "top_k"),
    ("api-generate-top-p-zero", _generate(top_p=0.0), "top_p"),
    ("api-generate-negative-temperature", _generate(temperature=-0.5), "temperature"),
    ("api-generate-penalty-zero", _generate(repetition_penalty=0.0), "repetition_penalty"),
    ("api-eval-negative-stride", _perplexity(stride=-1), "stride"),
    ("api-eval-short-data", lambda w: _perplexity(source=str(w.data / "short.txt"))(w), "too few"),
    ("api-quantize-unknown-method", _quantize("int3"), "int3"),
    ("api-quantize-bad-group-size", _quantize("int4", 7), "group size"),
    ("api-export-unknown-format", _export("zip"), "zip"),
    ("api-recipe-unknown", _config(lambda c, w: c.load_recipe("no-such-recipe")), "no-such-recipe"),
    ("api-recipe-not-mapping", _config(lambda c, w: c.RunConfig.from_dict(["model", "train"])), "mapping"),
    ("api-recipe-unknown-section", _config(lambda c, w: c.RunConfig.from_dict({"optimizer": {}})), "optimizer"),
    ("api-config-missing-file", _config(lambda c, w: c.load_run_config(w.data / "nope.yaml")), "not found"),
    ("api-config-malformed", _config(lambda c, w: c.load_run_config(w.data / "malformed.yaml")), "line 2"),
    ("api-model-heads", _config(lambda c, w: c.ModelConfig(d_model=64, n_head=5)), "heads"),
    ("api-train-lr", _config(lambda c, w: c.TrainConfig(lr=-1.0)), "train.lr"),
    ("api-train-not-a-config", lambda w: _train({"train": {"lr": 0.1}}, w.runs / "api-dict"), "RunConfig"),
    ("api-train-run-dir-is-file", lambda w: _train([], w.data / "a_file"), "is a file"),
    ("api-train-init-from-unknown",
     lambda w: _train(["train.mode=finetune", "train.init_from=nope"], w.runs / "api-init"), "train.init_from"),
    ("api-train-teacher-unknown",
     lambda w: _train(["train.mode=distill", "distill.teacher=nope"], w.runs / "api-teacher"), "distill.teacher"),
    ("api-resume-not-a-run", lambda w: _train([], w.data / "empty_folder", resume=True), "not a run"),
]


@pytest.mark.parametrize("call, word", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_refuses_bad_input(world, call, word):
    before_hash, before_runs = tree_hash(world.tiny), {p.name for p in world.runs.iterdir()}
    with pytest.raises(SLMError) as caught:
        call(world)
    message = str(caught.value)
    assert "\n" not in message and word.lower() in message.lower(), message
    assert tree_hash(world.tiny) == before_hash
    assert _new_entries(before_runs, world.runs) == set(), "a refused input left a folder behind"


def test_sampling_settings_are_never_silently_replaced():
    from slm_core.infer.sampling import SamplingParams

    SamplingParams(max_new_tokens=0, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0)  # all valid
    for bad in ({"top_p": 0.0}, {"temperature": -1.0}, {"top_k": -3}, {"repetition_penalty": -1.0},
                {"max_new_tokens": -1}, {"max_new_tokens": 2.5}):
        with pytest.raises(SLMError, match=next(iter(bad))):
            SamplingParams(**bad)


def test_eval_warns_when_data_is_shorter_than_one_window(world, tmp_path):
    """Enough tokens to score, fewer than the model's context: a result, with a warning saying so."""
    from slm_core.post.evaluate import perplexity

    text = tmp_path / "shortish.txt"
    text.write_text("the cat sat on the mat. " * 4)  # ~90 train tokens: enough to score, < one window of 128
    row = perplexity(_loaded(world), str(text), split="train")
    assert 64 <= row["tokens"] < 128
    assert row["warning"] and "less than one window" in row["warning"]


def test_init_from_run_name_resolves_in_runs_dir(world, capsys, tmp_path, monkeypatch):
    """train.init_from=NAME looks in --runs-dir, not in ./runs or $SLM_RUNS_DIR."""
    monkeypatch.chdir(tmp_path)  # no ./runs here, and the autouse fixture points $SLM_RUNS_DIR elsewhere
    argv = T("--name", "child", "--set", "train.mode=finetune", "--set", "train.init_from=tiny")
    code, out, err = run_cli(_fill(argv, world), capsys)
    try:
        assert code == 0, err
        assert runs.read_status(world.runs / "child")["state"] == "finished"
    finally:
        import shutil

        shutil.rmtree(world.runs / "child", ignore_errors=True)


@pytest.mark.parametrize("argv, word", [
    (["train", "--config", "{data}/malformed.yaml"], "line 2"),
    (["generate", "tiny", "--top-k", "-1"], "top_k"),
    (["train", *TINY_SETS, "--set", "train.mode=finetune", "--set", "train.init_from=nope"], "train.init_from"),
], ids=["yaml-malformed", "gen-negative-top-k", "init-from-unknown"])
def test_cli_process_exits_2_without_traceback(world, argv, word):
    env = {**os.environ, "SLM_RUNS_DIR": str(world.runs)}
    before = tree_hash(world.tiny), {p.name for p in world.runs.iterdir()}
    done = subprocess.run([sys.executable, "-m", "slm_core", *_fill(argv, world)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.strip().count("\n") == 0 and word in done.stderr, done.stderr
    assert (tree_hash(world.tiny), {p.name for p in world.runs.iterdir()}) == before
