"""The Serve tab: its handler starts `slm serve` on a real model, the official openai client gets a chat completion
with the key the page set, the live figures count it, a fresh handler (a reloaded page) finds the server, the Runs
tab lists it, and Stop ends the process."""

import pytest

from slm_core.errors import SLMError
from slm_core.run.runs import list_runs
from slm_core.system import pid_alive
from studio.served import ServeManager, check_request, parse_metrics
from studio.tabs.serve import live_figures, restore, serve_model, stop_server
from tests.serving import free_port


def test_serve_beyond_loopback_needs_a_key_as_slm_serve_does():
    with pytest.raises(SLMError, match="without an API key"):
        check_request("m", 8000, "0.0.0.0", None, "auto")
    assert check_request("m", "8001", "0.0.0.0", "k", "native") == (8001, "0.0.0.0")
    with pytest.raises(SLMError, match="outside"):
        check_request("m", 80, "127.0.0.1", None, "auto")


def test_metrics_parse_counts_completion_requests_and_tokens():
    text = ('slm_requests_total{endpoint="/v1/chat/completions",status="200"} 2\n'
            'slm_requests_total{endpoint="/metrics",status="200"} 5\n'
            'slm_requests_total{endpoint="/v1/completions",status="400"} 1\n'
            'slm_prompt_tokens_total 7\nslm_completion_tokens_total 12\n')
    assert parse_metrics(text) == {"requests": 3, "prompt_tokens": 7, "completion_tokens": 12}


@pytest.mark.slow  # a real server process (model load + one reply: ~8 s on 2 loaded cores)
def test_serve_tab_starts_answers_survives_a_reload_and_stops(tiny_run, tmp_path):
    openai = pytest.importorskip("openai")
    root, name = tiny_run
    manager, port = ServeManager(tmp_path), free_port()
    try:
        _serve_answer_reload_stop(openai, manager, port, str(root / name), name, tmp_path)
    finally:
        if manager.find(port) is not None:  # a failed assertion must not leave the server running
            manager.stop(port)


def _serve_answer_reload_stop(openai, manager, port, model, name, tmp_path):
    steps = list(serve_model(manager, model, port, "127.0.0.1", "sesame", "auto"))
    status, python, curl, _, shown = steps[-1]
    assert shown == port, status
    url = f"http://127.0.0.1:{port}/v1"
    assert url in status and "Engine: native torch" in status and "no onnxruntime-genai export" in status  # and why
    assert f'base_url="{url}"' in python and 'api_key="sesame"' in python and "Bearer sesame" in curl
    assert "sesame" not in (tmp_path / f"serve-{port}" / "status.json").read_text()  # the key stays off disk

    client = openai.OpenAI(base_url=url, api_key="sesame", max_retries=0)
    reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Once"}], max_tokens=6,
                                           temperature=0)
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()

    figures, _ = live_figures(manager, port)
    assert "**1** requests answered" in figures and f"**{reply.usage.completion_tokens}** tokens" in figures

    fresh = ServeManager(tmp_path)  # a reloaded page: a new handler over the same runs folder
    status, python, _, _, shown = restore(fresh)
    assert shown == port and url in status and 'api_key="YOUR_API_KEY"' in python
    row = next(r for r in list_runs(tmp_path) if r["name"] == f"serve-{port}")  # listed with the runs
    assert row["state"] == "serving" and row["kind"] == "serve"

    pid = fresh.find(port)["pid"]
    status, *_, shown = stop_server(fresh, port)
    assert "Stopped" in status and shown is None and not pid_alive(pid)
    assert fresh.live() == [] and restore(ServeManager(tmp_path))[-1] is None
    assert next(r for r in list_runs(tmp_path) if r["name"] == f"serve-{port}")["state"] == "stopped"


def test_a_server_that_ended_unseen_reads_as_stopped_or_failed(tmp_path):
    import json

    for port, log, state in ((8101, "serving 'm' (native torch) on http://127.0.0.1:8101/v1\n", "stopped"),
                             (8102, "Traceback (most recent call last):\nOSError: no model here\n", "failed")):
        folder = tmp_path / f"serve-{port}"
        folder.mkdir()
        (folder / "log.txt").write_text(log)
        (folder / "status.json").write_text(json.dumps({"kind": "serve", "state": "serving", "pid": 2 ** 22 + port,  # above pid_max: no such process
                                                        "port": port, "host": "127.0.0.1", "started_at": 1}))
    assert ServeManager(tmp_path).live() == [] and restore(ServeManager(tmp_path))[-1] is None
    states = {r["name"]: (r["state"], r["error"]) for r in list_runs(tmp_path)}
    assert states == {"serve-8101": ("stopped", None), "serve-8102": ("failed", "OSError: no model here")}
