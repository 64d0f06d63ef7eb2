"""GRPO (train.mode=grpo): rewards, advantages and the loss on their own; groups sampled on the batched decoder;
a custom reward by module:function called and logged; one-line errors for bad reward specs and offline Hub
prompts; a killed run resumes with its sampler state; and the recipe raises the arithmetic task's score."""

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slm_core.cli import main
from slm_core.config import GRPOConfig, RunConfig, load_recipe, load_run_config, save_user_recipe
from slm_core.errors import SLMError
from slm_core.infer.decoder import Decoder
from slm_core.infer.generate import generate_tokens
from slm_core.models.load import load_model
from slm_core.run import runs
from slm_core.train.grpo import group_advantages, grpo_loss, load_problems, render, sample_groups
from slm_core.train.loop import train
from slm_core.train.rewards import Batch, build_rewards, score_all

FORK = multiprocessing.get_context("fork")
# A 1-layer character model that has seen the arithmetic corpus for 20 steps: rewards mostly zero, but every
# GRPO mechanism runs on it in well under a second a step.
START = ["tokenizer.kind=char", "model.vocab_size=null", "model.n_layer=1", "model.d_model=32", "model.n_head=2",
         "model.n_kv_head=2", "model.d_ff=64", "model.context_length=48", "train.batch_size=8", "train.max_steps=20",
         "train.lr=0.01", "train.warmup_steps=1", "train.eval_interval=20", "train.ckpt_interval=20",
         "train.eval_batches=1", "train.sample_prompts=[]", "train.device=cpu"]


def grpo_overrides(start: Path, steps: int = 3, *extra: str) -> list[str]:
    return [f"train.init_from={start}", f"train.max_steps={steps}", "train.batch_size=2", "grpo.group_size=4",
            "grpo.max_new_tokens=8", f"train.eval_interval={steps}", f"train.ckpt_interval={steps}",
            "train.eval_batches=1", "train.sample_prompts=[]", "train.device=cpu", *extra]


@pytest.fixture(scope="module")
def start_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("grpo-start") / "start"
    train(load_recipe("arithmetic-start-cpu", START), run_dir, progress=False)
    return run_dir


# ---- rewards, advantages, loss ------------------------------------------------------------------------

def test_builtin_rewards_score_what_they_say():
    batch = Batch(prompts=["q"] * 4, completions=[" 3 plus 4 is 7.", "7", ' {"a": 1}', "x" * 40],
                  references=["7", "7", "7", None], lengths=[16, 1, 9, 40])
    cfg = GRPOConfig(rewards=["last_number", "exact_match", "format", "length"], length_target=20,
                     format_schema='{"type": "object", "required": ["a"]}', reward_weights=[1, 1, 1, 2])
    totals, each = score_all(build_rewards(cfg), batch)
    assert each["last_number"] == [1.0, 1.0, 0.0, 0.0]
    assert each["exact_match"] == [0.0, 1.0, 0.0, 0.0]
    assert each["format"] == [0.0, 0.0, 1.0, 0.0]
    assert each["length"] == [0.0, 0.0, 0.0, -1.0]
    assert totals == [1.0, 2.0, 1.0, -2.0]
    regex = build_rewards(GRPOConfig(rewards=["format"], format_regex=r"is \d+\.$"))
    assert score_all(regex, batch)[1]["format"] == [1.0, 0.0, 0.0, 0.0]


def test_group_advantages_and_the_loss_push_the_right_way():
    advantages, spread = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), group=4)
    assert advantages[:4].sum().abs() < 1e-5 and advantages[0] > 0 > advantages[1]
    assert torch.equal(advantages[4:], torch.zeros(4))  # a group that all scored the same teaches nothing
    assert spread[1] == 0 and spread[0] > 0
    logp = torch.log(torch.full((2, 3), 0.5)).requires_grad_()
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    loss, kl = grpo_loss(logp, logp.detach().clone(), torch.tensor([1.0, -1.0]), mask, beta=0.1)
    assert kl.item() == 0.0  # the reference is the policy itself
    loss.backward()
    assert (logp.grad[0, 1:] < 0).all() and (logp.grad[1, 1:] > 0).all()  # rewarded tokens made likelier
    assert (logp.grad[:, 0] == 0).all()  # the prompt is not trained


@pytest.mark.slow  # its fixture trains the start model (~10 s quiet; shared with the runs below)
def test_a_group_shares_its_prompt_cache_on_the_batched_decoder(start_run):
    loaded = load_model(start_run, tag="latest")
    problems = load_problems("builtin:arithmetic")[:2]
    prompts = [render(q, loaded.tokenizer, None) for q, _ in problems]
    decoder = Decoder(loaded.model, slots=6, max_len=48, one_row_half=False)
    stop = (loaded.tokenizer.eot_id,)
    # A temperature this low is greedy: each completion of a group equals batch-1 greedy decoding of its prompt.
    out = sample_groups(decoder, prompts, 3, 10, 1e-6, 0, stop, torch.Generator().manual_seed(0))
    for p, ids in enumerate(prompts):
        greedy = list(generate_tokens(loaded.model, ids, 10, temperature=0.0, stop_ids=stop, one_row_half=False))
        for completion in out[p * 3:(p + 1) * 3]:
            assert [t for t in completion if t not in stop] == greedy


# ---- a run -------------------------------------------------------------------------------------------

@pytest.mark.slow  # a 3-step run with evaluations and checkpoints: ~5 s quiet, much more under load
def test_a_custom_reward_by_module_function_is_called_and_logged(start_run, tmp_path, monkeypatch):
    (tmp_path / "grpo_test_rewards.py").write_text(
        "CALLS = []\n\n\n"
        "def digits(prompts, completions, references):\n"
        "    CALLS.append((len(prompts), len(completions), len(references)))\n"
        "    return [sum(ch.isdigit() for ch in c) / 10 for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = load_recipe("grpo-arithmetic-cpu", grpo_overrides(
        start_run, 3, "grpo.rewards=last_number,custom", "grpo.custom_reward=grpo_test_rewards:digits"))
    run_dir = tmp_path / "run"
    assert train(config, run_dir, progress=False)["state"] == "finished"

    import grpo_test_rewards

    assert grpo_test_rewards.CALLS == [(8, 8, 8)] * 3  # every step: 2 prompts x 4 completions
    rows = [r for r in runs.read_metrics(run_dir) if r.get("kind") == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        for key in ("reward", "reward/digits", "reward/last_number", "reward_std", "kl", "completion_len"):
            assert isinstance(row[key], float), key
    samples = runs.read_samples(run_dir)
    assert {s["step"] for s in samples} == {1, 2, 3}
    first = samples[0]
    assert set(first["rewards"]) == {"digits", "last_number"} and first["prompt"].startswith("Question: What is")
    assert first["rewards"]["digits"] == sum(ch.isdigit() for ch in first["text"]) / 10
    assert (run_dir / "checkpoints" / "latest" / "adapter").is_dir()  # LoRA by default: the adapter is saved


@pytest.mark.parametrize("setting, says", [
    ("grpo.rewards=accuracy", "grpo.rewards='accuracy' is invalid"),
    ("grpo.custom_reward=not a spec", "write it as module:function"),
    ("grpo.rewards=custom", "needs grpo.custom_reward"),
    ("grpo.rewards=format", "needs grpo.format_regex or grpo.format_schema"),
])
def test_a_bad_reward_spec_is_one_line(setting, says):
    with pytest.raises(SLMError) as error:
        RunConfig().with_overrides(["train.mode=grpo", setting])
    assert says in str(error.value) and "\n" not in str(error.value)


def test_a_custom_reward_that_cannot_be_imported_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "grpo_test_broken.py").write_text(
        "value = 3\n\n\ndef one_score(prompts, completions, references):\n    return [1.0]\n\n\n"
        "def raises(prompts, completions, references):\n    raise ValueError('no answer')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, says in [("no_such_module_here:score", "module 'no_such_module_here' not found"),
                       ("grpo_test_broken:missing", "has no function 'missing'"),
                       ("grpo_test_broken:value", "has no function 'value'")]:
        with pytest.raises(SLMError) as error:
            build_rewards(GRPOConfig(rewards=["custom"], custom_reward=spec))
        assert says in str(error.value) and "\n" not in str(error.value)
    batch = Batch(["q", "q"], ["a", "b"], [None, None], [1, 1])
    with pytest.raises(SLMError, match="returned 1 scores for 2 completions"):
        score_all(build_rewards(GRPOConfig(rewards=["grpo_test_broken:one_score"])), batch)
    with pytest.raises(SLMError, match="grpo_test_broken:raises raised ValueError: no answer"):
        score_all(build_rewards(GRPOConfig(rewards=["grpo_test_broken:raises"])), batch)


def test_cli_refuses_a_bad_reward_in_one_line(tmp_path, capsys):
    code = main(["train", "--preset", "grpo-arithmetic-cpu", "--runs-dir", str(tmp_path),
                 "--set", "grpo.rewards=last_number,nope"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "grpo.rewards='nope' is invalid" in lines[0]
    assert not any(tmp_path.iterdir())  # refused before any run folder exists


def test_hub_prompts_offline_fail_fast_naming_the_offline_alternative(network):
    with pytest.raises(SLMError) as error:
        load_problems("openai/gsm8k:main")
    assert "builtin:arithmetic" in str(error.value) and "\n" not in str(error.value)
    assert network == []


def test_prompts_from_a_file_take_gsm8k_answers(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"})
                    + "\n" + json.dumps({"question": "  ", "answer": "1"}) + "\n")
    with pytest.raises(SLMError, match="row 2: the 'question' field is empty"):
        load_problems(str(path))
    path.write_text(path.read_text().splitlines()[0] + "\n")
    assert load_problems(str(path)) == [("Question: Tom has 3 apples and buys 4. How many?\nAnswer:", "7")]


@pytest.mark.slow  # trains a start and one GRPO step
def test_a_recipe_as_the_start_is_trained_first_and_named_as_the_parent(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_RECIPES_DIR", str(tmp_path / "recipes"))
    save_user_recipe("grpo-test-start", load_recipe("arithmetic-start-cpu", START))
    run_dir = tmp_path / "runs" / "rl"
    train(load_recipe("grpo-arithmetic-cpu", grpo_overrides("recipe:grpo-test-start", 1)), run_dir, progress=False)
    start = tmp_path / "runs" / "rl-start"
    assert runs.read_status(start)["state"] == "finished" and runs.read_status(start)["step"] == 20
    assert runs.read_status(run_dir)["parent"] == str(start)
    assert load_run_config(run_dir / "config.yaml").train.init_from == str(start)  # a resume needs no recipe


# ---- kill and resume ---------------------------------------------------------------------------------

KILL_STEPS = 16


def _worker(config_overrides: list, run_dir: str, resume: bool) -> None:
    torch.set_num_threads(1)
    config = load_recipe("grpo-arithmetic-cpu", config_overrides)
    train(config, run_dir, resume=resume, progress=False)


def _run(overrides: list, run_dir: Path, resume: bool):
    proc = FORK.Process(target=_worker, args=(overrides, str(run_dir), resume))
    proc.start()
    return proc


def _train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in runs.read_metrics(run_dir) if r.get("kind") == "train"]


@pytest.mark.slow  # two 16-step runs, a kill and a resume
def test_a_killed_grpo_run_resumes_with_its_sampler_state(start_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_TRACK", "none")
    overrides = grpo_overrides(start_run, KILL_STEPS, "train.ckpt_interval=2", "grpo.sample_rows=8",
                               "model.dropout=0.1")  # dropout: the global RNG must come back too
    reference = tmp_path / "uninterrupted"
    proc = _run(overrides, reference, resume=False)
    proc.join(300)
    assert proc.exitcode == 0

    killed = tmp_path / "killed"
    proc = _run(overrides, killed, resume=False)
    deadline = time.monotonic() + 300
    while max(_train_steps(killed), default=0) < 5:  # past the step-4 checkpoint, before the end
        assert proc.is_alive() and time.monotonic() < deadline, "the worker ended before it could be killed"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    assert max(_train_steps(killed)) < KILL_STEPS
    proc = _run(overrides, killed, resume=True)
    proc.join(300)
    assert proc.exitcode == 0

    assert _train_steps(killed) == list(range(1, KILL_STEPS + 1))
    completions = lambda d: [(s["step"], s["prompt"], s["text"]) for s in runs.read_samples(d)]  # noqa: E731
    assert completions(killed) == completions(reference)  # the same prompts drawn, the same answers sampled
    rewards = lambda d: [r["reward"] for r in runs.read_metrics(d) if r.get("kind") == "train"]  # noqa: E731
    assert rewards(killed) == rewards(reference)
    ours = load_file(str(next((killed / "checkpoints" / "latest" / "adapter").glob("*.safetensors"))))
    theirs = load_file(str(next((reference / "checkpoints" / "latest" / "adapter").glob("*.safetensors"))))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# ---- the recipe raises the task's score ------------------------------------------------------------------

@pytest.mark.slow  # the whole recipe chain as a user runs it: ~2 minutes on 2 cores
def test_grpo_recipe_raises_the_arithmetic_task_score(tmp_path):
    from slm_core.post.harness import run_tasks

    run_dir = tmp_path / "grpo"
    train(load_recipe("grpo-arithmetic-cpu", ["train.device=cpu"]), run_dir, progress=False)
    start = tmp_path / "grpo-start"  # made first by the chain (train.init_from: recipe:arithmetic-start-cpu)
    assert runs.read_status(start)["state"] == "finished"

    def score(folder: Path) -> float:
        torch.manual_seed(0)
        return run_tasks(load_model(folder, tag="latest"), ["arithmetic"])["tasks"]["slm_arithmetic"]["exact_match"]

    before, after = score(start), score(run_dir)
    print(f"\narithmetic task: start {before:.3f}, after GRPO {after:.3f}")
    assert 0 < before < 0.6  # a start with rewards to learn from and room to grow
    assert after > before
