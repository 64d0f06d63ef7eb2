"""`slm serve` as tools other than a chat client use it, driven by the official `openai` client against a real
server process on the session's tiny trained model: log-probabilities (completions with echo, chat), token-id and
batched prompts, n choices, /health, Prometheus /metrics, a 400 naming each parameter it does not honour, and
lm-evaluation-harness's `local-completions` scoring a task with the numbers `slm eval --tasks` gives."""

import json
import math
import urllib.request

import pytest
from serving import start_serve, stop_serve

openai = pytest.importorskip("openai")

KEY = "sk-api-test"
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def server(tiny_char_run):
    """(base_url, run_dir) of `slm serve` on the session's tiny character model (exact fp32, a key required)."""
    process, base = start_serve(tiny_char_run.name, "--runs-dir", str(tiny_char_run.parent), "--dtype", "fp32",
                                "--api-key", KEY, "--slots", "4")
    try:
        yield base, tiny_char_run
    finally:
        stop_serve(process)


@pytest.fixture(scope="module")
def api(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def direct(server):
    """log p of each token of `ids` after the ones before it, from the model loaded in this process."""
    import torch
    import torch.nn.functional as F

    from slm_core.models.load import load_model

    loaded = load_model(server[1])

    @torch.inference_mode()
    def logprobs(ids: list[int]) -> list[float]:
        out = F.log_softmax(loaded.model(torch.tensor([ids])).float()[0, :-1], dim=-1)
        return out.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()

    logprobs.encode = loaded.tokenizer.encode
    return logprobs


def test_echo_with_logprobs_scores_the_prompt_and_the_completion(api, direct):
    done = api.completions.create(model="char", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2, echo=True)
    choice, ids = done.choices[0], direct.encode(PROMPT)
    lp = choice.logprobs
    assert choice.text.startswith(PROMPT) and done.usage.completion_tokens == 4
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) + 4
    assert "".join(lp.tokens) == choice.text and lp.text_offset[:3] == [0, 1, 2]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing comes before the first token
    expected = direct(ids + direct.encode(choice.text[len(PROMPT):]))
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    for token, value, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert 2 <= len(top) <= 3 and top[token] == value  # two alternatives and the token itself
    for value, top in zip(lp.token_logprobs[-4:], lp.top_logprobs[-4:]):
        assert value == pytest.approx(max(top.values()), abs=1e-5)  # greedy picked the most likely token

    one = api.completions.create(model="char", prompt=PROMPT, max_tokens=1, temperature=0, logprobs=2, echo=True)
    first = one.choices[0].logprobs  # one token: scored and sampled in the same pass
    assert one.choices[0].text == choice.text[:len(PROMPT) + 1] and len(first.tokens) == len(ids) + 1
    assert first.token_logprobs[1:] == pytest.approx(lp.token_logprobs[1:len(ids) + 1], abs=1e-4)
    assert first.top_logprobs[-1] == pytest.approx(lp.top_logprobs[len(ids)], abs=1e-4)

    scoring = api.completions.create(model="char", prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    assert scoring.choices[0].text == PROMPT and scoring.usage.completion_tokens == 0  # lm-eval's loglikelihood
    assert scoring.choices[0].logprobs.token_logprobs[1:] == pytest.approx(expected[:len(ids) - 1], abs=1e-4)
    plain = api.completions.create(model="char", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=1)
    assert plain.choices[0].text == choice.text[len(PROMPT):] and len(plain.choices[0].logprobs.tokens) == 4
    chunks = [c.choices[0] for c in api.completions.create(model="char", prompt=PROMPT, max_tokens=4, temperature=0,
                                                           logprobs=1, stream=True) if c.choices]
    assert "".join(c.text for c in chunks) == plain.choices[0].text  # streamed with its logprobs, token for token
    assert [t for c in chunks if c.logprobs for t in c.logprobs.token_logprobs] == \
        pytest.approx(plain.choices[0].logprobs.token_logprobs, abs=1e-5)


def test_token_id_and_batched_prompts_are_each_their_own_choice(api, direct):
    prompts = [PROMPT, "The little dog", "She said"]
    greedy = dict(model="char", max_tokens=6, temperature=0)
    alone = [api.completions.create(prompt=p, **greedy).choices[0].text for p in prompts]
    ids = [direct.encode(p) for p in prompts]
    assert api.completions.create(prompt=ids[0], **greedy).choices[0].text == alone[0]
    for prompt in (prompts, ids):
        batch = api.completions.create(prompt=prompt, **greedy)
        assert [c.index for c in batch.choices] == [0, 1, 2] and [c.text for c in batch.choices] == alone
        assert batch.usage.prompt_tokens == sum(len(i) for i in ids) and batch.usage.completion_tokens == 18


def test_n_choices_are_sampled_apart_and_a_seed_repeats_them(api):
    ask = dict(model="char", prompt=PROMPT, max_tokens=12, temperature=1.0, n=3, seed=7)
    first = api.completions.create(**ask)
    assert [c.index for c in first.choices] == [0, 1, 2] and first.usage.completion_tokens == 36
    texts = [c.text for c in first.choices]
    assert len(set(texts)) > 1 and [c.text for c in api.completions.create(**ask).choices] == texts
    assert [c.text for c in api.completions.create(**ask, best_of=3).choices] == texts  # best_of = n: the same
    streamed = {}
    for chunk in api.completions.create(stream=True, **ask):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert [streamed[i] for i in range(3)] == texts  # interleaved deltas, each choice whole
    two = api.completions.create(**{**ask, "prompt": [PROMPT, "The little dog"], "n": 2})
    assert [c.index for c in two.choices] == [0, 1, 2, 3] and [c.text for c in two.choices[:2]] == texts[:2]
    chat = api.chat.completions.create(model="char", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                       n=2, seed=3)
    assert [c.index for c in chat.choices] == [0, 1]


def test_chat_logprobs_list_each_token_with_its_alternatives(api):
    done = api.chat.completions.create(model="char", messages=[{"role": "user", "content": "The little dog"}],
                                       max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = done.choices[0].logprobs.content
    assert len(content) == done.usage.completion_tokens == 5
    assert "".join(t.token for t in content) == done.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 3 and token.logprob == pytest.approx(token.top_logprobs[0].logprob, abs=1e-5)
        assert bytes(token.bytes).decode() == token.token and token.logprob <= 0
    plain = api.chat.completions.create(model="char", messages=[{"role": "user", "content": "The little dog"}],
                                        max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == done.choices[0].message.content


@pytest.mark.parametrize("extra, param", [
    ({"logit_bias": {"5": 10}}, "logit_bias"), ({"suffix": "end"}, "suffix"), ({"best_of": 3}, "best_of"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"), ({"min_p": 0.1}, "min_p"), ({"logprobs": 21}, "logprobs"),
    ({"prompt": [[1, 2], [10**9]]}, "prompt"), ({"prompt": []}, "prompt"),
])
def test_an_unsupported_completion_parameter_is_a_400_naming_it(api, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        api.completions.create(model="char", prompt=PROMPT, max_tokens=2, extra_body=extra)
    assert caught.value.body["param"] == param, caught.value.body


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"echo": True}, "echo"), ({"presence_penalty": 1}, "presence_penalty"),
])
def test_an_unsupported_chat_parameter_is_a_400_naming_it(api, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model="char", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                    extra_body=extra)
    assert caught.value.body["param"] == param, caught.value.body
    ok = api.chat.completions.create(model="char", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                     response_format={"type": "text"}, frequency_penalty=0)  # "off" values pass
    assert ok.choices[0].finish_reason in ("length", "stop")


def test_a_request_without_model_is_answered_by_the_one_model_served(server):
    """lm-eval's `gguf` model (its llama.cpp client) sends no model, as vLLM and llama.cpp's server allow."""
    base, _ = server
    request = urllib.request.Request(base + "/v1/completions", method="POST", headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, data=json.dumps(
        {"prompt": PROMPT, "max_tokens": 1, "echo": True, "logprobs": 3, "temperature": 0}).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    assert answer["model"] == "char" and answer["choices"][0]["logprobs"]["text_offset"][-1] == len(PROMPT)


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:  # no key: probes and scrapers carry none
        return response.status, response.read().decode()


def _series(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_health_and_prometheus_metrics_count_requests_and_tokens(server, api):
    base, _ = server
    status, body = _get(base + "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    before = _series(_get(base + "/metrics")[1])
    done = api.completions.create(model="char", prompt=PROMPT, max_tokens=3, temperature=0)
    with pytest.raises(openai.BadRequestError):
        api.completions.create(model="char", prompt=PROMPT, max_tokens=2, extra_body={"suffix": "x"})
    after = _series(_get(base + "/metrics")[1])
    ok, bad = 'slm_requests_total{endpoint="/v1/completions",status="200"}', \
        'slm_requests_total{endpoint="/v1/completions",status="400"}'
    assert after[ok] == before.get(ok, 0) + 1 and after[bad] == before.get(bad, 0) + 1
    assert after["slm_prompt_tokens_total"] - before["slm_prompt_tokens_total"] == done.usage.prompt_tokens
    assert after["slm_completion_tokens_total"] - before["slm_completion_tokens_total"] == 3
    assert after["slm_requests_in_flight"] == 1  # the scrape itself


@pytest.mark.slow  # the ONNX export alone takes a minute or two here
def test_a_genai_engine_refuses_logprobs_naming_the_native_engine(tiny_char_run, tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from fastapi.testclient import TestClient

    from slm_core.infer.onnx import OnnxEngine, build_genai_folder
    from slm_core.infer.serve import Served, chat_encoder, create_app
    from slm_core.models.load import load_model

    loaded = load_model(tiny_char_run)
    build_genai_folder(loaded.model, loaded.tokenizer, tmp_path / "genai")
    engine = OnnxEngine(tmp_path / "genai", inline_alone=False)
    try:
        app = TestClient(create_app(Served(engine, "char", chat_encoder(None, engine.tokenizer))))
        answer = app.post("/v1/completions", json={"model": "char", "prompt": PROMPT, "max_tokens": 2, "logprobs": 1})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "logprobs"
        assert "--engine native" in answer.json()["error"]["message"]
        echoed = app.post("/v1/completions", json={"model": "char", "prompt": PROMPT, "max_tokens": 2, "echo": True,
                                                   "temperature": 0, "n": 2}).json()
        assert [c["text"][:len(PROMPT)] for c in echoed["choices"]] == [PROMPT, PROMPT]
    finally:
        engine.close()


@pytest.mark.slow
def test_lm_eval_local_completions_scores_a_task_as_slm_eval_does(server, monkeypatch):
    """lm-evaluation-harness's own API model, finding the server's tokenizer through /tokenize as it does
    vLLM's, gives the same per-item log-likelihoods and accuracy as `slm eval --tasks` (run_tasks)."""
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("tenacity", reason="lm-eval's API models need lm-eval[api] (tenacity, aiohttp)")
    pytest.importorskip("aiohttp", reason="lm-eval's API models need lm-eval[api] (tenacity, aiohttp)")
    from lm_eval.tasks import TaskManager

    from slm_core.models.load import load_model
    from slm_core.post.harness import harness_model, run_tasks
    from slm_core.post.tasks import task_configs

    base, run_dir = server
    limit = 12
    loaded = load_model(run_dir)
    ours = run_tasks(loaded, ["opposites"], limit=limit)["tasks"]["slm_opposites"]

    def per_item(model, **kwargs) -> tuple[dict, list]:
        configs, _ = task_configs(["opposites"])
        out = lm_eval.simple_evaluate(model=model, tasks=configs, limit=limit, task_manager=TaskManager(
            include_defaults=False), bootstrap_iters=0, log_samples=True, random_seed=1234, **kwargs)
        samples = sorted(out["samples"]["slm_opposites"], key=lambda s: s["doc_id"])
        return out["results"]["slm_opposites"], [[(float(r[0]), bool(r[1])) for r in s["filtered_resps"]] for s in samples]

    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # what local-completions sends as its bearer token
    served, served_items = per_item("local-completions", model_args=f"model=char,base_url={base}/v1/completions,"
                                                                     f"auth_token={KEY},max_retries=1")
    _, local_items = per_item(harness_model(loaded))
    assert len(served_items) == limit
    for a, b in zip(served_items, local_items):
        assert [x[0] for x in a] == pytest.approx([x[0] for x in b], abs=1e-4)  # the log-likelihoods
        assert [x[1] for x in a] == [x[1] for x in b]  # is-greedy
    assert served["acc,none"] == ours["acc"] and served["acc_norm,none"] == ours["acc_norm"]
    assert not any(math.isnan(x[0]) for item in served_items for x in item)
