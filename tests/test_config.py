"""Settings: `--set` overrides are type-checked, unknown names are refused, impossible model
shapes name the offending field, and a RunConfig survives a YAML round trip unchanged."""

import pytest
import yaml

from slm_core.config import ModelConfig, RunConfig, list_presets, load_model_preset, load_recipe, load_run_config
from slm_core.errors import SLMError


@pytest.fixture
def recipe() -> RunConfig:
    return load_recipe("quickstart-cpu")


# ---- overrides -----------------------------------------------------------------------------

@pytest.mark.parametrize("override,field", [
    ("train.max_steps=abc", "train.max_steps"),
    ("train.max_steps=2.5", "train.max_steps"),
    ("train.lr=fast", "train.lr"),
    ("train.compile=maybe", "train.compile"),
    ("model.n_layer=two", "model.n_layer"),
])
def test_an_override_of_the_wrong_type_names_the_field(recipe, override, field):
    with pytest.raises(SLMError, match=field.replace(".", r"\.")):
        recipe.with_overrides([override])


def test_overrides_are_parsed_into_the_declared_types(recipe):
    config = recipe.with_overrides(["train.max_steps=1e3", "train.lr=3e-4", "train.compile=yes",
                                    "train.grad_checkpointing=false", "model.vocab_size=null",
                                    "train.sample_prompts=[\"Once\", \"The dog\"]", "lora.targets=q_proj,v_proj",
                                    "train.precision=bf16"])
    assert config.train.max_steps == 1000 and isinstance(config.train.max_steps, int)
    assert config.train.lr == pytest.approx(3e-4)
    assert config.train.compile is True and config.train.grad_checkpointing is False
    assert config.model.vocab_size is None
    assert config.train.sample_prompts == ["Once", "The dog"]
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.train.precision == "bf16"
    assert recipe.train.max_steps != 1000  # the original is untouched


def test_a_single_prompt_override_becomes_a_one_item_list(recipe):
    assert recipe.with_overrides(["train.sample_prompts=Once upon a time"]).train.sample_prompts == \
        ["Once upon a time"]


def test_a_prompt_with_a_colon_stays_text(recipe):
    assert recipe.with_overrides(["train.sample_prompts=ROMEO:"]).train.sample_prompts == ["ROMEO:"]


@pytest.mark.parametrize("override,expected", [
    ("train.foo=1", "foo"),
    ("trian.lr=1e-3", "trian"),
    ("train.max_steps", "section.key=value"),
    ("max_steps=10", "section.key=value"),
])
def test_unknown_keys_and_sections_are_refused(recipe, override, expected):
    with pytest.raises(SLMError, match=expected):
        recipe.with_overrides([override])


def test_unknown_sections_and_fields_in_yaml_are_refused():
    with pytest.raises(SLMError, match="trian"):
        RunConfig.from_dict({"trian": {"lr": 1e-3}})
    with pytest.raises(SLMError, match="learning_rate"):
        RunConfig.from_dict({"train": {"learning_rate": 1e-3}})
    with pytest.raises(SLMError, match="mapping"):
        RunConfig.from_dict({"train": 5})
    with pytest.raises(SLMError, match="no model preset named 'nope'"):
        RunConfig.from_dict({"model": "nope"})


def test_a_yaml_boolean_is_not_a_number():
    with pytest.raises(SLMError, match="train.max_steps"):
        RunConfig.from_dict({"train": {"max_steps": True}})


# ---- validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("settings,field", [
    (dict(d_model=256, n_head=3), "model.d_model"),  # width not divisible by the heads
    (dict(n_head=4, n_kv_head=3), "model.n_kv_head"),  # heads not divisible by the KV heads
    (dict(family="llama", d_model=60, n_head=4), "model.d_model"),  # RoPE needs an even head size
    (dict(n_layer=0), "model.n_layer"),
    (dict(family="mistral"), "model.family"),
    (dict(norm="batchnorm"), "model.norm"),
    (dict(dropout=1.0), "model.dropout"),
    (dict(rope_scaling="yarn"), "model.rope_scaling"),
    (dict(vocab_size=1), "model.vocab_size"),
])
def test_an_impossible_model_shape_names_the_field(settings, field):
    with pytest.raises(SLMError, match=field.replace(".", r"\.")):
        ModelConfig(**settings)


def test_an_impossible_head_override_names_the_field(recipe):
    with pytest.raises(SLMError, match=r"model\.n_kv_head"):
        recipe.with_overrides(["model.n_kv_head=3"])
    with pytest.raises(SLMError, match="number of heads"):
        recipe.with_overrides(["model.n_head=5"])


def test_modes_that_need_a_source_say_so_before_a_run_starts(recipe):
    distill = recipe.with_overrides(["train.mode=distill"])  # a recipe may leave the teacher to the user...
    with pytest.raises(SLMError, match=r"distill\.teacher"):
        distill.check_ready()  # ...but a run cannot start without one
    with pytest.raises(SLMError, match=r"train\.init_from"):
        recipe.with_overrides(["train.mode=lora"]).check_ready()
    recipe.with_overrides(["train.mode=lora", "train.init_from=my-run"]).check_ready()


def test_a_recipe_can_change_fields_of_the_model_preset_it_names():
    config = RunConfig.from_dict({"model": {"preset": "tiny-llama", "n_layer": 2, "name": "student"}})
    preset = load_model_preset("tiny-llama")
    assert config.model.n_layer == 2 and config.model.name == "student"
    assert (config.model.d_model, config.model.n_kv_head, config.model.d_ff) == \
        (preset.d_model, preset.n_kv_head, preset.d_ff)
    assert RunConfig.from_dict({"model": "tiny-llama"}).model == preset


def test_family_defaults_fill_unset_fields_only():
    llama = ModelConfig(family="llama", d_model=256)
    assert (llama.norm, llama.mlp, llama.position, llama.bias) == ("rmsnorm", "swiglu", "rope", False)
    assert llama.d_ff == 704  # 8/3 * 256 rounded up to a multiple of 64, as Llama does
    gpt2 = ModelConfig(family="gpt2", d_model=256, norm="rmsnorm")
    assert gpt2.norm == "rmsnorm" and gpt2.mlp == "gelu" and gpt2.d_ff == 1024


# ---- YAML ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_presets("recipes"))
def test_every_recipe_survives_a_yaml_round_trip(name, tmp_path):
    config = load_recipe(name, ["train.sample_prompts=[\"a: b\", \"c\"]", "lora.targets=q_proj,o_proj"])
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    again = load_run_config(path)
    assert again == config
    assert again.to_yaml() == config.to_yaml()
    assert yaml.safe_load(config.to_yaml())["model"]["d_ff"] == config.model.d_ff  # resolved values are saved
