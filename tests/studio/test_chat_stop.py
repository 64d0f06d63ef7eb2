"""Stop in the Chat tab is per browser session: with two tabs streaming replies from the same shared engine
(decoded in one batch), Stop in one tab ends that tab's reply and leaves the other one running to the end."""

import socket
import time

import pytest

from studio.chat_session import StopFlags

# temperature 0.8, top-k 50, top-p 1, repetition penalty 1.1, the slider's most tokens, seed, engine, system prompt
LONG = (0.8, 50, 1.0, 1.1, 1024, "7", "native", "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_flags_are_per_session_and_bounded():
    flags = StopFlags()
    flags.get("tab-a").set()
    assert flags.get("tab-a").is_set() and not flags.get("tab-b").is_set()
    assert flags.get(None) is not flags.get(None)  # no session: never shared
    for i in range(StopFlags.LIMIT + 10):
        flags.get(f"s{i}")
    assert len(flags.flags) == StopFlags.LIMIT


def stop_one_of_two_tabs(runs_dir, tab: str, api: str, warm_up: tuple, long: tuple):
    """Two browser sessions (gradio clients) stream `api` with the same `long` inputs; the first presses its
    tab's Stop (`{api}_stop`) once both stream. Returns each session's final outputs."""
    from gradio_client import Client

    from studio.app import build_app, launch

    demo = build_app(runs_dir, tabs=[tab])
    port = free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    try:
        tab_a, tab_b = (Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(2))  # two sessions
        list(tab_a.submit(*warm_up, api_name=api))
        job_a, job_b = (client.submit(*long, api_name=api) for client in (tab_a, tab_b))
        deadline = time.time() + 60
        while len(job_a.outputs()) < 3 or len(job_b.outputs()) < 3:  # both are streaming
            assert time.time() < deadline and not (job_a.done() or job_b.done())
            time.sleep(0.02)
        tab_a.predict(api_name=f"{api}_stop")
        return job_a.result(timeout=120), job_b.result(timeout=120)
    finally:
        demo.close()


@pytest.mark.timeout(240)
def test_stop_in_one_tab_leaves_the_other_tabs_reply_running(copy_of_tiny_run, tmp_path):
    runs_dir, name = copy_of_tiny_run(tmp_path)
    (_, _, stats_a, _), (_, _, stats_b, _) = stop_one_of_two_tabs(
        runs_dir, "studio.tabs.chat", "/chat", ("Once", [], name, "best", 0.8, 50, 1.0, 1.1, 4, "1", "native", ""),
        ("Once upon a time", [], name, "best", *LONG))
    assert "stopped" in stats_a and "stopped" not in stats_b and "done" in stats_b
    tokens = [int(s.split(" tokens in")[0].split()[-1]) for s in (stats_a, stats_b)]
    assert tokens[0] < tokens[1]  # A ended early; B went on after A's Stop


@pytest.mark.timeout(240)
def test_stop_in_one_compare_tab_leaves_the_other_tabs_pair_running(copy_of_tiny_run, tmp_path):
    runs_dir, name = copy_of_tiny_run(tmp_path)
    sampling = LONG[:6]  # Compare has no engine choice; the system prompt comes last
    (*_, info_a, _), (*_, info_b, _) = stop_one_of_two_tabs(
        runs_dir, "studio.tabs.compare", "/compare", ("Once", [], [], name, name, 0.8, 50, 1.0, 1.1, 4, "1", ""),
        ("Once upon a time", [], [], name, name, *sampling, ""))
    assert "stopped" in info_a and "stopped" not in info_b and "done" in info_b
