"""`slm serve` as a client sees it: a real server process on loopback serving a tiny trained model, driven
by the official `openai` client and by plain HTTP. Concurrent streams are each correct (greedy equals
the single-client answer and the native path), and bad requests get OpenAI-shaped 4xx errors while
the server stays up."""

import json
import threading
import urllib.error
import urllib.request

import pytest
from serving import start_serve, stop_serve

from slm_core.config import load_recipe

QUICK = ["data.max_chars=400000", "tokenizer.vocab_size=512", "model.context_length=64", "model.vocab_size=null",
         "model.n_layer=1", "train.batch_size=4", "train.precision=fp32", "train.eval_batches=2",
         "train.sample_tokens=4", "train.warmup_steps=2", "train.lr=0.003", "train.max_steps=6",
         "train.eval_interval=3", "train.ckpt_interval=3"]
KEY = "sk-local-test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base_url, run_dir) of `slm serve` on a freshly trained tiny run; stopped after the module."""
    from slm_core.train.loop import train

    root = tmp_path_factory.mktemp("serve-runs")
    train(load_recipe("quickstart-cpu", QUICK), root / "tiny", progress=False)
    process, base = start_serve("tiny", "--runs-dir", str(root), "--dtype", "fp32", "--api-key", KEY, "--slots", "4")
    try:
        yield base, root / "tiny"
    finally:
        stop_serve(process)


def http(method: str, url: str, body=None, key: str = KEY, raw: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict | str]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        return error.code, json.loads(text) if text.startswith("{") else text


def client(base: str):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)


def test_the_openai_client_lists_completes_and_streams(server):
    base, _ = server
    api = client(base)
    assert [m.id for m in api.models.list().data] == ["tiny"]
    done = api.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12, temperature=0)
    assert done.choices[0].text and done.usage.completion_tokens == 12 and done.choices[0].finish_reason == "length"
    assert done.usage.total_tokens == done.usage.prompt_tokens + 12
    chat = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "The little dog"}],
                                       max_tokens=10, temperature=0.8, top_p=0.9, seed=3)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 10
    again = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "The little dog"}],
                                        max_tokens=10, temperature=0.8, top_p=0.9, seed=3)
    assert again.choices[0].message.content == chat.choices[0].message.content  # the seed is honoured
    stream = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "The little dog"}],
                                         max_tokens=10, temperature=0.8, top_p=0.9, seed=3, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content  # streamed and whole answers agree
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")


def test_concurrent_streaming_clients_each_get_their_own_greedy_answer(server):
    from slm_core.infer.generate import complete
    from slm_core.models.load import load_model

    base, run_dir = server
    api = client(base)
    prompts = ["Once upon a time", "The little dog", "She said", "A big red ball", "Tom and Sue"]
    # Greedy with a repetition penalty (vLLM's extra field): deterministic, and varied even from a 6-step model.
    greedy = dict(max_tokens=16, temperature=0, extra_body={"repetition_penalty": 1.5})
    alone = [api.completions.create(model="tiny", prompt=p, **greedy).choices[0].text for p in prompts]
    together = [None] * len(prompts)

    def stream(i):
        pieces = api.completions.create(model="tiny", prompt=prompts[i], stream=True, **greedy)
        together[i] = "".join(c.choices[0].text for c in pieces)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert together == alone
    loaded = load_model(run_dir)  # the native path, in this process: the same greedy text
    assert [complete(loaded, p, max_new_tokens=16, temperature=0, repetition_penalty=1.5, use_template=False)
            for p in prompts] == alone
    assert len(set(alone)) > 1  # different prompts, different answers: streams did not cross


def test_stop_strings_and_plain_http_streaming(server):
    base, _ = server
    status, whole = http("POST", base + "/v1/completions",
                         {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 20, "temperature": 0})
    text = whole["choices"][0]["text"]
    assert status == 200 and len(text) > 4
    stop = text[3:5]
    _, cut = http("POST", base + "/v1/completions", {"model": "tiny", "prompt": "Once upon a time",
                                                     "max_tokens": 20, "temperature": 0, "stop": [stop]})
    assert cut["choices"][0]["text"] == text[:text.index(stop)] and cut["choices"][0]["finish_reason"] == "stop"
    request = urllib.request.Request(base + "/v1/chat/completions", method="POST", data=json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}).encode(),
        headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.read().decode().split("\n") if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["choices"][0]["delta"]["role"] == "assistant"


@pytest.mark.timeout(60)  # a stream that slept out its interval after the last token would take 600 s
def test_a_paced_stream_gathers_the_tokens_decoded_between_its_events_and_ends_with_its_request(server):
    from fastapi.testclient import TestClient

    from slm_core.infer.serve import create_app, load_served

    _, run_dir = server
    served = load_served(str(run_dir), dtype="fp32", name="tiny")
    served.stream_interval_s = 600  # far longer than decoding the whole answer takes
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 40, "temperature": 0,
            "repetition_penalty": 1.5}
    try:
        app = TestClient(create_app(served))
        whole = app.post("/v1/completions", json=body).json()
        events = [json.loads(line[6:]) for line in app.post("/v1/completions", json={**body, "stream": True}).text
                  .split("\n") if line.startswith("data: {")]
    finally:
        served.engine.close()
    texts = [e["choices"][0]["text"] for e in events if e["choices"][0]["text"]]
    assert whole["usage"]["completion_tokens"] == 40 and "".join(texts) == whole["choices"][0]["text"]
    assert len(texts) <= 2  # the first token alone, then the rest gathered (unpaced: an event per token)
    assert events[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("body, raw, key, status, says", [
    ({"model": "nope", "prompt": "hi"}, None, KEY, 404, "does not exist"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": -1}, None, KEY, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "hi " * 200}, None, KEY, 400, "maximum context length"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": 64}, None, KEY, 400, "maximum context length"),
    ({"model": "tiny", "prompt": "hi", "temperature": -1}, None, KEY, 400, "temperature"),
    (None, b"{not json", KEY, 400, "not valid JSON"),
    ({"model": "tiny", "prompt": "hi"}, None, "sk-wrong", 401, "API key"),
])
def test_bad_requests_get_openai_shaped_errors_and_the_server_stays_up(server, body, raw, key, status, says):
    base, _ = server
    code, answer = http("POST", base + "/v1/completions", body, key=key, raw=raw)
    assert code == status and says in answer["error"]["message"] and answer["error"]["type"]
    assert http("GET", base + "/v1/models")[0] == 200



@pytest.mark.parametrize("content", [5, {"text": "hi"}, [{"type": "image_url", "image_url": "x"}], [5]])
def test_chat_content_that_is_not_text_is_a_400_naming_the_field(server, content):
    base, _ = server
    body = {"model": "tiny", "messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": content}]}
    code, answer = http("POST", base + "/v1/chat/completions", body)
    assert code == 400 and answer["error"]["param"] == "messages[1].content", answer
    assert http("POST", base + "/v1/chat/completions",
                {**body, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                 "max_tokens": 2})[0] == 200

def test_the_openai_client_raises_its_own_errors(server):
    openai = pytest.importorskip("openai")
    base, _ = server
    with pytest.raises(openai.NotFoundError):
        client(base).chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/v1", api_key="bad", max_retries=0).models.list()


def test_a_foreign_host_or_origin_is_refused_like_the_studio_does(server):
    """DNS rebinding (a Host that is not this server) and a page on another site (a foreign Origin) are both
    refused even with the right key; loopback names and this server's own origin are served."""
    base, _ = server
    port = base.rsplit(":", 1)[1]
    for headers in ({"Host": "attacker.example"}, {"Host": f"attacker.example:{port}"},
                    {"Origin": "http://attacker.example"}, {"Origin": "http://127.0.0.1:1"}):
        status, body = http("GET", base + "/v1/models", headers=headers)
        assert status == 403 and "Forbidden" in body, (headers, status, body)
    for headers in ({"Host": f"localhost:{port}"}, {"Origin": f"http://127.0.0.1:{port}"}):
        status, body = http("GET", base + "/v1/models", headers=headers)
        assert status == 200 and body["data"][0]["id"] == "tiny", headers


@pytest.mark.parametrize("flags, says", [(["--api-key", ""], "--api-key is empty"),
                                         (["--host", "0.0.0.0"], "without --api-key"),
                                         (["--stream-interval-ms", "-5"], "--stream-interval-ms")])
def test_bad_serve_flags_are_refused_before_loading_the_model(capsys, flags, says):
    from slm_core.cli import main

    assert main(["serve", "no-such-run", *flags]) == 2  # the flag is named, not the missing run
    assert says in capsys.readouterr().err


def test_an_exposed_bind_with_a_key_or_insecure_gets_past_the_refusal(capsys):
    from slm_core.cli import main

    for flags in (["--host", "0.0.0.0", "--api-key", "k"], ["--host", "0.0.0.0", "--insecure"]):
        assert main(["serve", "no-such-run", *flags]) == 2  # now it is the missing run that stops it
        err = capsys.readouterr().err
        assert "without --api-key" not in err and "no run named 'no-such-run'" in err
