"""The Studio's DPO / ORPO / GRPO wiring (issue 25): the Train form's command for each mode is what `slm train`
accepts, a real LoRA-DPO run's metrics draw the reward plots, Compare puts its base beside it, and the Data tab
previews preference pairs."""

import shlex

import pytest

from slm_core.config import load_recipe
from slm_core.errors import SLMError
from slm_core.train.preflight import preflight_train
from studio import watch
from studio.command import WEIGHT_KEYS, grpo_form_values, page_overrides, recipe_values, shell_command, train_args
from studio.plots import training_figure
from studio.tabs.train import samples_html

KEYS = ["train.mode", "train.init_from", "train.max_steps", "data.source", "lora.r", "preference.beta",
        "preference.loss", "preference.lora", "grpo.prompts", "grpo.group_size", "grpo.rewards", "grpo.format_regex",
        "grpo.format_schema", "grpo.length_target", "grpo.custom_reward", "grpo.max_new_tokens", "grpo.temperature",
        "grpo.kl_beta", "grpo.lora", *WEIGHT_KEYS]


def page(recipe: str, **changes):
    """(model preset, field values) of the Train form right after picking `recipe`, some fields edited."""
    preset, values = recipe_values(recipe, KEYS)
    values = dict(zip(KEYS, values))
    values.update({k.replace("__", "."): v for k, v in changes.items()})
    return preset, values


def accepted(recipe: str, preset, values: dict, runs_dir):
    """The form's shell command, read back as `slm train` reads it and checked as it checks a run before starting."""
    command = shell_command(train_args(recipe, page_overrides(recipe, preset, values), "new"))
    args = shlex.split(command)
    assert args[:4] == ["slm", "train", "--preset", recipe]
    config = load_recipe(recipe, [args[i + 1] for i, a in enumerate(args) if a == "--set"])
    preflight_train(config, runs_dir / "new")
    return config


@pytest.fixture(scope="module")
def lora_dpo(tiny_run, tmp_path_factory):
    """(runs_dir, base name, run name): 2 LoRA-DPO steps on the shipped pairs from a copy of the session's tiny run."""
    import shutil

    from slm_core.train.loop import train

    root, base = tiny_run
    runs_dir = tmp_path_factory.mktemp("dpo-runs")
    shutil.copytree(root / base, runs_dir / base)
    config = load_recipe("dpo-stories-cpu", [
        f"train.init_from={runs_dir / base}", "data.max_documents=40", "data.val_fraction=0.2", "train.max_steps=2",
        "train.batch_size=4", "train.eval_interval=2", "train.eval_batches=2", "train.ckpt_interval=2",
        "train.warmup_steps=0", "train.precision=fp32", "train.sample_tokens=4", "model.context_length=64"])
    train(config, runs_dir / "dpo", progress=False)
    return runs_dir, base, "dpo"


def test_each_new_mode_builds_a_command_slm_train_accepts(tiny_run):
    runs_dir, base = tiny_run
    preset, values = page("dpo-stories-cpu", train__init_from=base, preference__beta=0.2, preference__loss="ipo")
    config = accepted("dpo-stories-cpu", preset, values, runs_dir)
    assert (config.train.mode, config.preference.beta, config.preference.loss) == ("dpo", 0.2, "ipo")
    assert config.uses_lora and config.train.init_from == base

    values.update({"train.mode": "orpo", "preference.lora": False})
    config = accepted("dpo-stories-cpu", preset, values, runs_dir)
    assert config.train.mode == "orpo" and not config.uses_lora

    preset, values = page("grpo-arithmetic-cpu")  # the recipe as picked: nothing to override
    assert page_overrides("grpo-arithmetic-cpu", preset, values) == []
    assert values["grpo.rewards"] == ["last_number"] and values["train.init_from"] == "recipe:arithmetic-start-cpu"
    from studio.model_picker import details  # the Base model box says what that start is, not "no such run"

    assert "Made first: recipe **arithmetic-start-cpu**" in details(None, values["train.init_from"], runs_dir)
    preset, values = page("grpo-arithmetic-cpu", train__init_from=base, grpo__group_size=4.0,
                          grpo__rewards=["last_number", "format_regex", "length", "custom"],
                          grpo__format_regex=r"is \d+\.$", grpo__format_schema='{"type": "object"}',
                          grpo__custom_reward="my_rewards:score", grpo__weight__length=0.25, grpo__kl_beta=0.0)
    config = accepted("grpo-arithmetic-cpu", preset, values, runs_dir)
    grpo = config.grpo
    assert grpo.rewards == ["last_number", "format", "length", "custom"] and grpo.reward_weights == [1, 1, 0.25, 1]
    assert (grpo.format_regex, grpo.format_schema) == (r"is \d+\.$", None)  # the schema's box is not ticked
    assert (grpo.custom_reward, grpo.group_size, grpo.kl_beta) == ("my_rewards:score", 4, 0.0)
    back = grpo_form_values(config.to_dict()["grpo"])
    assert back["grpo.rewards"] == ["last_number", "format_regex", "length", "custom"]
    assert back["grpo.weight.length"] == 0.25 and back["grpo.weight.last_number"] == 1.0

    # An invalid combination is the engine's one-line message, which the page shows.
    values.update({"grpo.rewards": ["format_schema"], "grpo.format_schema": ""})
    with pytest.raises(SLMError, match=r"the 'format' reward needs grpo.format_regex or grpo.format_schema") as error:
        page_overrides("grpo-arithmetic-cpu", preset, values)
    assert "\n" not in str(error.value)


def test_a_dpo_runs_metrics_draw_rewards_margin_and_accuracy(lora_dpo):
    runs_dir, _, name = lora_dpo
    rows = watch.metrics(runs_dir / name)
    fig = training_figure(rows, unit="bpb", bytes_per_token=3.0)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:3] == ["Rewards: chosen vs rejected (β × log-ratio to the reference)",
                          "Reward margin (chosen − rejected)", "Reward accuracy: pairs whose chosen reward is higher"]
    named = {trace.name: trace for trace in fig.data}
    for label in ("chosen (train)", "rejected (train)", "margin (train)", "reward accuracy (train)",
                  "chosen (held-out)", "margin (held-out)", "reward accuracy (held-out)",
                  "model prefers chosen (log-prob) (held-out)"):
        assert label in named, sorted(named)
    assert list(named["margin (train)"].x) == [1, 2] and list(named["margin (held-out)"].x) == [0, 2]
    # a pair's loss has no per-token unit: no bits per byte (nor perplexity) for DPO
    assert "bits per byte" not in {fig.layout[k].title.text for k in fig.layout if k.startswith("yaxis")}


def test_grpo_samples_show_their_rewards_apart_from_the_evaluation_samples():
    rows = [{"step": 0, "prompt": "Question: What is 3 plus 4?\nAnswer:", "text": " 7"},
            {"step": 3, "prompt": "Question: What is 2 plus 6?\nAnswer:", "text": " 2 plus 6 is 8.", "reward": 1.5,
             "rewards": {"last_number": 1.0, "length": 0.5}, "reference": "8"}]
    html = samples_html(rows)
    evaluation, rollouts = html.split("Sampled completions", 1)
    assert " 7" in evaluation and "2 plus 6 is 8." not in evaluation
    assert all(s in rollouts for s in ("<th>last_number</th>", "<th>length</th>", "<td>8</td>", "<b>1.5</b>", "0.5"))


def test_compare_puts_the_base_beside_a_lora_dpo_run(lora_dpo):
    from studio.compare_session import PairSession, lora_base, lora_runs
    from studio.tabs.compare import base_and_adapter

    runs_dir, base, name = lora_dpo
    assert lora_runs(runs_dir) == [(name, str(runs_dir / name))]  # the base itself is no before/after pair
    assert lora_base(runs_dir / name) == str(runs_dir / base)
    source_a, source_b, *_ = base_and_adapter(runs_dir, name)
    assert (source_a["value"], source_b["value"]) == (str(runs_dir / base), str(runs_dir / name))
    pair = PairSession(runs_dir)
    pair.load((source_a["value"], source_b["value"]))
    assert f"Loaded `{base}`" in pair.describe(0) and f"Loaded `{name}`" in pair.describe(1)
    # B is the base with the DPO adapter on: the same prompt scores differently than on A (the adapter off)
    import torch

    a, b = (side.loaded for side in pair.sides)
    ids = torch.tensor([a.tokenizer.encode("Once upon a time")])
    with torch.no_grad():
        assert not torch.equal(a.model(ids), b.model(ids))


def test_the_data_tab_previews_preference_pairs(tmp_path):
    from studio.helper import Helper
    from studio.tabs.data import KINDS, kind_of, preview

    helper = Helper(idle_s=30)
    try:
        summary, cards, _ = preview(helper, "builtin:preferences", "", "", 0)
        assert "**3,000 preference pairs**" in summary and cards.count("<pre") == 5
        assert "prompt:" in cards and "chosen:" in cards and "rejected:" in cards
        mine = tmp_path / "pairs.jsonl"
        mine.write_text('{"prompt": "Hi", "chosen": "Hello there.", "rejected": "there Hello."}\n'
                        '{"prompt": "Q", "chosen": "A good one.", "rejected": "one good A."}\n')
        summary, cards, _ = preview(helper, str(mine), "", "", 0)
        assert "**2 preference pairs**" in summary and "there Hello." in cards
        summary, cards, _ = preview(helper, "builtin:arithmetic", "", "", 0)
        assert "documents" in summary and "Question: What is" in cards
    finally:
        helper.close()
    assert kind_of("builtin:preferences") == KINDS[5] and kind_of("builtin:arithmetic") == KINDS[6]
