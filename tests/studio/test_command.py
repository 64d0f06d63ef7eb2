"""The page's fields → a RunConfig → `--set` overrides → the same RunConfig from the shell."""

import shlex

import pytest

from slm_core.config import load_recipe
from slm_core.errors import SLMError
from studio.command import model_from_fields, page_config, page_overrides, recipe_values, shell_command, train_args

KEYS = ["model.family", "model.n_layer", "model.n_head", "model.n_kv_head", "model.d_model", "model.d_ff",
        "model.context_length", "model.vocab_size", "model.dropout", "data.source", "data.text_column",
        "tokenizer.kind", "tokenizer.vocab_size", "train.mode", "train.init_from", "train.max_steps", "train.lr",
        "train.precision", "train.compile", "distill.teacher", "distill.alpha", "lora.r", "lora.targets"]


def page(recipe="quickstart-cpu", **changes):
    """The page right after picking `recipe`, with some fields edited (keys with __ for dots)."""
    preset, values = recipe_values(recipe, KEYS)
    values = dict(zip(KEYS, values))
    values.update({k.replace("__", "."): v for k, v in changes.items()})
    return preset, values


def test_an_untouched_recipe_needs_no_overrides():
    preset, values = page()
    assert preset == "tiny-llama"
    assert page_overrides("quickstart-cpu", preset, values) == []
    assert shell_command(train_args("quickstart-cpu", [])) == "slm train --preset quickstart-cpu"


def test_edits_become_overrides_that_rebuild_the_same_config_from_the_shell():
    # Gradio numbers arrive as floats; a family switch must bring that family's norm/MLP/positions along.
    preset, values = page(model__family="gpt2", model__n_layer=2.0, model__d_ff=None, train__max_steps=40.0,
                          train__lr=0.0005, data__source="some/file.txt", train__compile=True)
    config = page_config("quickstart-cpu", preset, values)
    overrides = page_overrides("quickstart-cpu", preset, values)
    assert "train.max_steps=40" in overrides and "model.norm=layernorm" in overrides
    assert load_recipe("quickstart-cpu", overrides) == config
    assert config.model.mlp == "gelu" and config.model.d_ff == 4 * config.model.d_model
    # The command line round-trips through a shell.
    args = shlex.split(shell_command(train_args("quickstart-cpu", overrides, "my run")))
    assert args[:5] == ["slm", "train", "--preset", "quickstart-cpu", "--name"] and args[5] == "my run"
    assert args[7::2] == overrides


def test_fields_of_other_modes_stay_out_of_the_command():
    preset, values = page(lora__r=32.0, distill__alpha=0.9, train__init_from="runs/base")
    assert page_overrides("quickstart-cpu", preset, values) == []
    preset, values = page(train__mode="lora", lora__r=32.0, lora__targets="q_proj,v_proj",
                          train__init_from="runs/base")
    overrides = page_overrides("quickstart-cpu", preset, values)
    assert overrides == ["train.mode=lora", "train.init_from=runs/base", "lora.r=32",
                         'lora.targets=["q_proj", "v_proj"]']
    assert load_recipe("quickstart-cpu", overrides).lora.target_modules == ["q_proj", "v_proj"]


def test_invalid_shapes_raise_the_message_that_names_the_field():
    with pytest.raises(SLMError, match=r"model.d_model=256 .*divisible by the number of heads \(3\)"):
        model_from_fields("tiny-llama", {"n_head": 3})
    with pytest.raises(SLMError, match=r"model.n_kv_head=3"):
        model_from_fields("tiny-llama", {"n_head": 4, "n_kv_head": 3})
    assert model_from_fields("tiny-llama", {"n_layer": 4}).name == "tiny-llama"
    assert model_from_fields("tiny-llama", {"n_layer": 6}).name == "tiny-llama-custom"


def test_the_processes_panel_becomes_the_exact_torchrun_flags_and_gpu_choice():
    from studio.launch_form import launch_from

    assert launch_from([1, [], 1, 0, ""]) == ([], {})  # one process: the plain command
    launch, env = launch_from([2, [0, 1], 1, 0, ""])
    assert (launch, env) == (["--nproc", "2"], {"CUDA_VISIBLE_DEVICES": "0,1"})
    launch, env = launch_from([4.0, [], 2.0, 1.0, " node0:29500 "])  # Gradio numbers arrive as floats
    line = shell_command(train_args("quickstart-cpu", ["train.strategy=fsdp"], None, None, launch), env)
    assert line == ("slm train --preset quickstart-cpu --set train.strategy=fsdp --nproc 4 --nnodes 2 "
                    "--node-rank 1 --rdzv-endpoint node0:29500")
    # The line the page shows is what the CLI parses: the launcher's own argv handling keeps it whole.
    from slm_core.train.distributed import strip_launch_flags

    assert strip_launch_flags(shlex.split(line)[1:]) == ["train", "--preset", "quickstart-cpu", "--set",
                                                         "train.strategy=fsdp"]
    assert shlex.split(shell_command(["train"], {"CUDA_VISIBLE_DEVICES": "2,3"}))[0] == "CUDA_VISIBLE_DEVICES=2,3"


def test_the_gpu_picker_says_when_there_is_no_gpu():
    from studio.launch_form import gpu_note

    assert "No CUDA GPU found" in gpu_note([]) and "gloo" in gpu_note([])
    assert gpu_note([{"index": 0}, {"index": 1}]).startswith("2 CUDA GPUs found")


@pytest.mark.parametrize("values,words", [
    ([2, [], 2, 0, ""], "rdzv-endpoint HOST:PORT"),
    ([2, [], 2, 2, "h:29500"], "--node-rank 2 must be between 0 and 1"),
    ([2, [], 2, 0, "just-a-host"], "HOST:PORT"),
    ([3, [0, 1], 1, 0, ""], "one process per GPU"),
    ([0, [], 1, 0, ""], "at least 1"),
])
def test_impossible_launch_settings_say_what_to_fix(values, words):
    from studio.launch_form import launch_from

    with pytest.raises(SLMError, match=words):
        launch_from(values)
