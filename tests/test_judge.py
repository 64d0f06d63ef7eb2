"""LLM-as-judge against a real `slm serve` on loopback serving a tiny character model trained on the
judge's answer format ("Score: 7 / Verdict: A / Reason: ..."). A model that small writes the format
only now and then, which is what a test of the plumbing needs: every reply the judge gave is kept,
parsed the same way as in the unit tests below, and a reply without a score is unscored, never a
crash. The endpoint's failures (unreachable, timeout, HTTP errors) are checked on real HTTP."""

import json

import pytest
from serving import free_port, start_serve, stop_serve

from slm_core.config import load_recipe
from slm_core.errors import SLMError
from slm_core.post.judge import (
    Endpoint,
    agreement,
    combine_orders,
    judge_pairwise,
    judge_replies,
    load_prompts,
    parse_score,
    parse_verdict,
)
from slm_core.train.loop import train

# Every judge prompt ends with "then one line 'Reason: ...'."; the answer follows it on the next line.
JUDGE_TEXT = "then one line 'Reason: ...'.\nScore: 7\nVerdict: A\nReason: the reply is clear.\n"
JUDGE_MODEL = ["tokenizer.kind=char", "model.context_length=512", "model.vocab_size=null", "model.n_layer=1",
               "train.batch_size=1", "train.precision=fp32", "train.eval_batches=1", "train.sample_tokens=4",
               "train.warmup_steps=10", "train.lr=0.005", "train.max_steps=100", "train.eval_interval=100",
               "train.ckpt_interval=100"]
ITEMS = [{"prompt": "Say hi.", "reply": "Hi!"}, {"prompt": "What is 2 plus 2?", "reply": "4."}]


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory):
    """http://127.0.0.1:PORT/v1 of `slm serve` running the tiny judge (stopped after the module)."""
    folder = tmp_path_factory.mktemp("judge")
    corpus = folder / "judge.txt"
    corpus.write_text(JUDGE_TEXT * 3000)
    train(load_recipe("quickstart-cpu", JUDGE_MODEL + [f"data.source={corpus}"]), folder / "judge", progress=False)
    server, base = start_serve(str(folder / "judge"), "--name", "tiny-judge")
    try:
        yield f"{base}/v1"
    finally:
        stop_serve(server)


def judge(url: str, **kwargs) -> Endpoint:
    return Endpoint(url, max_tokens=48, **kwargs)  # the prompt and the reply fit the judge's 512 characters


def test_every_reply_is_kept_parsed_and_averaged_with_the_endpoint_and_rubric(judge_url):
    result = judge_replies(judge(judge_url), ITEMS, seed=3)
    assert result["endpoint"] == {"base_url": judge_url, "model": "tiny-judge", "timeout_s": 60.0, "temperature": 0.0,
                                  "max_tokens": 48}
    assert set(result["rubric"]) == {"helpfulness", "correctness", "fluency"} and result["seed"] == 3
    scores = []
    for item, judgement in zip(ITEMS, result["judgements"]):
        assert judgement["prompt"] == item["prompt"] and judgement["reply"] == item["reply"]
        for criterion, raw in judgement["raw"].items():
            assert isinstance(raw, str) and raw  # the judge answered every request
            assert judgement["scores"][criterion] == parse_score(raw)
            if judgement["scores"][criterion] is None:
                assert judgement["reasons"][criterion].startswith("no score in the judge's reply")
        scores += list(judgement["scores"].values())
    assert result["unscored"] == sum(s is None for s in scores)
    for criterion, mean in result["means"].items():
        values = [j["scores"][criterion] for j in result["judgements"] if j["scores"][criterion] is not None]
        assert mean == (sum(values) / len(values) if values else None)
    json.dumps(result)  # saved as JSON beside the model


def test_two_runs_with_different_seeds_and_their_agreement(judge_url):
    first = judge_replies(judge(judge_url), ITEMS, seed=0)
    second = judge_replies(judge(judge_url), ITEMS, seed=1)
    # a greedy judge (temperature 0) says the same whatever the seed
    assert [j["raw"] for j in first["judgements"]] == [j["raw"] for j in second["judgements"]]
    report = agreement(first, second)
    assert report["pairs"] == 6 - first["unscored"]
    assert report["exact"] in ((1.0,) if report["pairs"] else (None,))


def test_pairwise_judges_each_pair_in_both_orders(judge_url):
    pairs = [{"prompt": i["prompt"], "a": i["reply"], "b": "I do not know."} for i in ITEMS]
    result = judge_pairwise(judge(judge_url), pairs)
    assert sum(result["counts"].values()) == 2
    for row in result["items"]:
        forward, swapped = row["raw"]
        assert row["orders"] == [parse_verdict(forward), parse_verdict(swapped)]
        assert row["verdict"] == combine_orders(*row["orders"])


def test_a_judge_that_times_out_marks_items_unscored_and_goes_on(judge_url):
    result = judge_replies(judge(judge_url, timeout_s=0.001), ITEMS[:1],
                           rubric={"fluency": "Is it fluent?"})
    assert result["unscored"] == 1 and result["means"] == {"fluency": None}
    assert "timed out" in result["judgements"][0]["reasons"]["fluency"]


def test_a_reply_with_no_score_is_unscored_not_a_crash(judge_url):
    result = judge_replies(judge(judge_url, model="no-such-model"), ITEMS[:1], rubric={"fluency": "Fluent?"})
    assert result["unscored"] == 1  # the server answers 404 for an unknown model: recorded, not raised
    assert "HTTP 404" in result["judgements"][0]["reasons"]["fluency"]


def test_an_unreachable_judge_is_refused_in_seconds_naming_the_url(monkeypatch):
    """One probe of /models, with a timeout of seconds, and no item is sent: it is refused before any asking."""
    import httpx

    url = f"http://127.0.0.1:{free_port()}/v1"
    sent = []
    real_send = httpx.Client.send

    def recorded(client, request, **kwargs):
        sent.append((request.method, request.url.path, request.extensions.get("timeout", {})))
        return real_send(client, request, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", recorded)
    with pytest.raises(SLMError, match=f"no judge answers at {url}"):
        judge_replies(Endpoint(url), ITEMS)
    assert [(method, path) for method, path, _ in sent] == [("GET", "/v1/models")]  # no retry, no item asked
    timeouts = sent[0][2]  # connect, read, write, pool
    assert timeouts and all(0 < seconds <= 5 for seconds in timeouts.values()), timeouts
    with pytest.raises(SLMError, match="must start with http"):
        judge_replies(Endpoint("127.0.0.1:8000"), ITEMS)


@pytest.mark.parametrize("text, score", [("Score: 7\nReason: fine", 7), ("**Score:** 9/10", 9), ("score = 3.4", 3),
                                         ("Score: 11", None), ("I would give it a seven.", None), ("", None)])
def test_score_parsing(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize("forward, swapped, verdict", [
    ("A", "B", "A"),  # A first, then A again from the second position: A wins
    ("B", "A", "B"),
    ("A", "A", "tie"),  # always the first position: position bias, cancelled
    ("tie", "tie", "tie"),
    ("A", None, "unscored"),
])
def test_a_pair_judged_in_both_orders(forward, swapped, verdict):
    assert combine_orders(forward, swapped) == verdict


@pytest.mark.parametrize("text, verdict", [("Verdict: A", "A"), ("verdict: [B]\nReason", "B"), ("Winner: tie", "tie"),
                                           ("A is better", None)])
def test_verdict_parsing(text, verdict):
    assert parse_verdict(text) == verdict


def test_prompt_sets(tmp_path):
    builtin = load_prompts(None, limit=5)
    assert len(builtin) == 5 and all(item["prompt"] and item["reference"] for item in builtin)
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Tell a story."}\n\n{"instruction": "Add", "input": "2 and 3", "output": "5"}\n')
    assert load_prompts(str(path)) == [{"prompt": "Tell a story.", "reference": None},
                                       {"prompt": "Add\n\n2 and 3", "reference": "5"}]
    path.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(SLMError, match="line 2"):
        load_prompts(str(path))
