"""Benchmark tasks through lm-evaluation-harness on a real (tiny) trained model: the shipped offline
tasks score in range and reproducibly, the adapter's scores are the model's own log-probabilities,
and tasks from a user's JSONL are scored by what the model actually prefers or writes."""

import json
import math

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional 'eval' extra")

from slm_core.errors import SLMError  # noqa: E402
from slm_core.infer.generate import complete  # noqa: E402
from slm_core.models.load import load_model  # noqa: E402
from slm_core.post.harness import _encode_pair, _score_pairs, harness_model, run_tasks  # noqa: E402


@pytest.fixture(scope="module")
def loaded(tiny_char_run):
    """A 1-layer character model trained for 30 steps on the built-in stories."""
    return load_model(tiny_char_run)


def test_shipped_tasks_score_in_range_and_reproducibly(loaded):
    first = run_tasks(loaded, ["story_ending", "opposites", "arithmetic"], limit=6)
    assert set(first["tasks"]) == {"slm_story_ending", "slm_opposites", "slm_arithmetic"}
    for name, row in first["tasks"].items():
        assert row["samples"] == 6, (name, row)
        metric = "exact_match" if name == "slm_arithmetic" else "acc"
        assert 0.0 <= row[metric] <= 1.0
        assert row[metric] * 6 == pytest.approx(round(row[metric] * 6))  # a count of right answers out of 6
    again = run_tasks(loaded, ["story_ending", "opposites", "arithmetic"], limit=6)
    assert again["tasks"] == first["tasks"]


def test_adapter_scores_are_the_models_own_log_probabilities(loaded):
    tokenizer, model = loaded.tokenizer, loaded.model
    pairs = [_encode_pair(tokenizer, "Once upon a time there ", "was a cat"), _encode_pair(tokenizer, "The dog", " ran")]
    scored = _score_pairs(model, pairs, 64, batch_size=2, progress=lambda n: None)  # padded into one batch
    for (context, continuation), (logprob, _) in zip(pairs, scored):
        ids = torch.tensor([context + continuation])
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(ids[:, :-1]).float()[0], dim=-1)
        expected = sum(float(logprobs[len(context) - 1 + i, t]) for i, t in enumerate(continuation))
        assert logprob == pytest.approx(expected, abs=1e-4)
    # the space before a word moves into the continuation, as the harness's own models do
    assert _encode_pair(tokenizer, "The dog ", "ran") == pairs[1]


def test_a_users_multiple_choice_task_is_won_by_what_the_model_prefers(loaded, tmp_path):
    contexts = ["Once upon a time, there was a little", "The cat sat on the", "She was very happy and"]
    records = []
    for context in contexts:  # the model's most likely next character against two others
        with torch.inference_mode():
            logits = loaded.model(torch.tensor([loaded.tokenizer.encode(context)]))[0, -1]
        ranked = [loaded.tokenizer.decode([int(i)]) for i in torch.argsort(logits, descending=True)]
        best, others = ranked[0], [c for c in ranked[-40:] if c.isalpha()][:2]
        records.append({"question": context, "choices": others + [best], "answer": best})  # answer by text
    path = tmp_path / "next_char.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    row = run_tasks(loaded, [str(path)])["tasks"]["user_next_char"]
    assert row["acc"] == 1.0 and row["samples"] == 3


def test_a_users_generation_task_is_scored_on_what_the_model_writes(loaded, tmp_path):
    prompts = ["What is the cat called?", "Where is the ball?"]
    replies = [complete(loaded, f"Question: {p}\nAnswer:", max_new_tokens=24, temperature=0.0, use_template=False)
               .split("\n")[0].split("Question:")[0] for p in prompts]
    right, wrong = tmp_path / "right.jsonl", tmp_path / "wrong.jsonl"
    right.write_text("".join(json.dumps({"prompt": p, "reference": r}) + "\n" for p, r in zip(prompts, replies)))
    wrong.write_text("".join(json.dumps({"prompt": p, "reference": "zebra xylophone"}) + "\n" for p in prompts))
    scores = run_tasks(loaded, [str(right), str(wrong)])["tasks"]
    assert scores["user_right"]["exact_match"] == 1.0
    assert scores["user_wrong"]["exact_match"] == 0.0


def test_rolling_loglikelihood_matches_the_models_perplexity_on_the_same_text(loaded):
    from lm_eval.api.instance import Instance

    text = "Once upon a time, there was a little girl named Lily."  # one window of the 64-char context
    model = harness_model(loaded)
    [logprob] = model.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = torch.tensor([[loaded.tokenizer.eot_id] + loaded.tokenizer.encode(text)])
    with torch.inference_mode():
        nll = torch.nn.functional.cross_entropy(loaded.model(ids[:, :-1])[0].float(), ids[0, 1:], reduction="sum")
    assert logprob == pytest.approx(-float(nll), abs=1e-3)
    assert math.isfinite(logprob)


@pytest.mark.parametrize("tasks, words", [
    (["no_such_task_anywhere"], "unknown task"),
    (["missing.jsonl"], "not found"),
    ([], "at least one task"),
])
def test_bad_task_names_are_refused_with_what_to_do(loaded, tasks, words):
    with pytest.raises(SLMError, match=words):
        run_tasks(loaded, tasks)


def test_a_task_file_without_the_fields_is_refused(loaded, tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(SLMError, match="question/choices/answer"):
        run_tasks(loaded, [str(path)])
