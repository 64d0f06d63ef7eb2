"""Every model and recipe preset loads, builds on the meta device, describes itself, and is the
size its description claims."""

import dataclasses
import re

import pytest
import torch

from slm_core.config import list_presets, load_model_preset, load_recipe, preset_description
from slm_core.models.estimate import NOMINAL_VOCAB, training_memory
from slm_core.models.model import Transformer

MODELS = list_presets("models")
RECIPES = list_presets("recipes")
GPT2_VOCAB = 50257


def build_on_meta(config) -> Transformer:
    if config.vocab_size is None:  # set from the tokenizer when a run starts
        config = dataclasses.replace(config, vocab_size=NOMINAL_VOCAB)
    with torch.device("meta"):
        return Transformer(config)


def test_the_presets_the_docs_promise_exist():
    assert {"tiny-gpt", "tiny-llama", "gpt2-124m", "llama-3.2-1b", "shakespeare-char"} <= set(MODELS)
    assert "quickstart-cpu" in RECIPES


@pytest.mark.parametrize("name", MODELS)
def test_model_preset_builds_on_meta_and_is_described(name):
    config = load_model_preset(name)
    assert config.name == name
    model = build_on_meta(config)
    assert model.num_parameters() > 0
    assert all(p.is_meta for p in model.parameters())  # nothing was allocated
    assert len(preset_description("models", name)) > 20


@pytest.mark.parametrize("name", MODELS)
def test_model_preset_is_the_size_its_description_says(name):
    """'~4M', '124M', 'about 1.24B': every size the description mentions is within 25% of the count."""
    claims = re.findall(r"(\d+(?:\.\d+)?)\s*([MB])\b", preset_description("models", name))
    count = build_on_meta(load_model_preset(name)).num_parameters()
    for number, unit in claims:
        claimed = float(number) * (1e6 if unit == "M" else 1e9)
        assert abs(count - claimed) / claimed < 0.25, f"{name}: description says {number}{unit}, count is {count:,}"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_builds_on_meta_and_is_described(name):
    config = load_recipe(name)
    assert config.preset == name
    assert len(preset_description("recipes", name)) > 20
    model_config = config.model
    if model_config.vocab_size is None:
        vocab = {"bpe": config.tokenizer.vocab_size, "gpt2": GPT2_VOCAB}.get(config.tokenizer.kind, NOMINAL_VOCAB)
        model_config = dataclasses.replace(model_config, vocab_size=vocab)
    build_on_meta(model_config)
    if config.tokenizer.kind == "bpe" and config.model.vocab_size is not None:
        assert config.model.vocab_size >= config.tokenizer.vocab_size  # every token has an embedding row


@pytest.mark.parametrize("name", [r for r in RECIPES if r.endswith("-cpu")])
def test_cpu_recipes_train_within_a_laptops_memory(name):
    config = load_recipe(name)
    estimate = training_memory(config.model, config.train.batch_size, "fp32", config.train.grad_checkpointing,
                               grad_accum=config.train.grad_accum, device="cpu")
    assert estimate["total_mb"] < 2048, f"{name} needs about {estimate['total_mb']:.0f} MB to train"


@pytest.mark.parametrize("name", [r for r in RECIPES if r.endswith("-gpu")])
def test_gpu_recipes_train_within_an_80_gb_gpu(name):
    config = load_recipe(name)
    estimate = training_memory(config.model, config.train.batch_size, "bf16", config.train.grad_checkpointing,
                               grad_accum=config.train.grad_accum, device="cuda")
    assert estimate["total_mb"] < 0.9 * 80 * 1024, f"{name} needs about {estimate['total_mb'] / 1024:.1f} GB"
