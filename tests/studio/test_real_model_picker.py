"""The model picker's details for a real model (what it is, and the memory to chat, LoRA, QLoRA or fine-tune
it here), its Hub download (progress lines; offline, the refusal with the cache's list reaches the page) and
the Train tab's "shrink this model" summary, through the real helper process the page uses."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from real_shapes import LLAMA_32_1B, header_only_folder, hub_cache_snapshot  # noqa: E402

from studio.helper import Helper  # noqa: E402
from studio.model_picker import details, download, progress_text  # noqa: E402

# The page's helper (studio.helper) in a process where every attempt to reach a network is refused, as on a
# machine without one, and written down in $SLM_TEST_NETWORK_LOG (loopback and local sockets pass).
OFFLINE_HELPER = """
import errno, os, socket

from studio import helper

LOCAL = (None, "localhost", "127.0.0.1", "::1")
real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect


def note(what, target):
    with open(os.environ["SLM_TEST_NETWORK_LOG"], "a") as log:
        log.write(f"{what} {target!r}\\n")


def getaddrinfo(host, *args, **kwargs):
    if host in LOCAL:
        return real_getaddrinfo(host, *args, **kwargs)
    note("getaddrinfo", host)
    raise socket.gaierror(errno.ENETUNREACH, "network is unreachable (refused by the test)")


def connect(sock, address):
    if sock.family == socket.AF_UNIX or address[0] in LOCAL:
        return real_connect(sock, address)
    note("connect", address)
    raise OSError(errno.ENETUNREACH, "network is unreachable (refused by the test)")


socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect
helper.main()
"""


def network_attempts(helper_dir: Path) -> list[str]:
    log = helper_dir / "network.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def helper_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("offline-helper")
    (folder / "offline_helper.py").write_text(OFFLINE_HELPER)
    return folder


@pytest.fixture(scope="module")
def fresh_helper(tmp_path_factory, helper_dir):
    """A helper process (one for the module) that sees a Hugging Face cache holding meta-llama/Llama-3.2-1B
    (header-only weights), offline: HF_HUB_OFFLINE is set and any network attempt is refused and logged."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    hub_cache_snapshot(cache, "meta-llama/Llama-3.2-1B", LLAMA_32_1B)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_CACHE", str(cache))
        env.setenv("HF_HUB_OFFLINE", "1")
        env.setenv("SLM_TEST_NETWORK_LOG", str(helper_dir / "network.log"))
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(helper_dir), os.environ.get("PYTHONPATH")])))
        helper = Helper(idle_s=60, module="offline_helper")
        helper.call("model_estimate", {"spec": "meta-llama/Llama-3.2-1B"})  # started here, inside this environment
        yield helper
        helper.close()


def test_download_progress_reads_as_bytes_of_total_and_files_done():
    spec = "Qwen/Qwen2.5-0.5B-Instruct"
    assert progress_text(spec, {}).endswith("Downloading **Qwen/Qwen2.5-0.5B-Instruct**: asking the Hub for the "
                                            "file list…")
    bars = {"Fetching 7 files": {"n": 3, "total": 7, "desc": "Fetching 7 files"},
            "Downloading bytes": {"n": 100 * 2**20, "total": 988 * 2**20, "desc": "Downloading bytes"},
            "Reconstructing (incomplete total...)": {"n": 512 * 2**20, "total": 988 * 2**20,
                                                     "desc": "Reconstructing (incomplete total...)"}}
    # Bytes written to the cache are what is done; the network's bar stands in until they start.
    assert progress_text(spec, bars).endswith("512.00 MB of 988.00 MB (52%) · 3 of 7 files done")
    del bars["Reconstructing (incomplete total...)"]
    assert progress_text(spec, bars).endswith("100.00 MB of 988.00 MB (10%) · 3 of 7 files done")
    bars["Downloading bytes"] = {"n": 3 * 2**30, "total": 4 * 2**30, "desc": "Downloading bytes"}
    assert "3.00 GB of 4.00 GB (75%)" in progress_text(spec, bars)


def test_offline_a_hub_download_fails_in_seconds_on_the_page_naming_what_the_cache_holds(fresh_helper, helper_dir):
    before = network_attempts(helper_dir)
    lines = list(download("Qwen/Qwen2.5-0.5B-Instruct", helper=fresh_helper))
    assert network_attempts(helper_dir) == before == []  # refused from the cache alone: nothing waits on a network
    assert "Downloading **Qwen/Qwen2.5-0.5B-Instruct**" in lines[0]
    assert "Error" in lines[-1] and "HF_HUB_OFFLINE is set" in lines[-1]
    assert "holds: meta-llama/Llama-3.2-1B" in lines[-1]
    assert "Type a Hub id" in list(download("not a hub id"))[-1]


def test_the_picker_details_show_a_cached_real_model_and_what_it_needs_here(fresh_helper, tmp_path):
    text = details(fresh_helper, "meta-llama/Llama-3.2-1B", tmp_path / "runs",
                   {"train.batch_size": 2, "model.context_length": 256, "lora.r": 16})
    assert "**Llama-3.2-1B**" in text or "**meta-llama/Llama-3.2-1B**" in text
    assert "LlamaForCausalLM · 1.2B parameters · context 131,072 · bf16 · 2.47 GB on disk" in text
    for row in ("| Chat (", "| LoRA (3.4M trainable)", "| QLoRA, int8 base", "| QLoRA, int4 base", "| Full fine-tune"):
        assert row in text
    assert text.count(" fits |") + text.count("does not fit |") == 5
    assert "batch 2 × context 256 tokens" in text
    assert "not downloaded yet" in details(fresh_helper, "Qwen/Qwen2.5-0.5B", tmp_path / "runs")
    assert "holds no model: pick a Hugging Face folder" in details(fresh_helper, str(tmp_path), tmp_path / "runs")


def test_shrink_this_model_shows_teacher_and_student_before_launch(fresh_helper, tmp_path):
    from studio import shrink_form

    teacher = tmp_path / "Llama-3.2-1B"
    header_only_folder(teacher, LLAMA_32_1B)
    text = shrink_form.summary(fresh_helper, str(teacher), 8, tmp_path / "runs")
    assert "| Layers | 16 | 8 (teacher's 0, 2, 4, 6, 9, 11, 13, 15) |" in text
    assert "| Parameters | 1.2B | 749.2M |" in text
    assert "| Weights in bf16 | 2.3 GB | 1.4 GB |" in text
    assert "expected speed-up **1.6×**" in text or "expected speed-up **1.7×**" in text
    assert shrink_form.summary(fresh_helper, str(teacher), 0, tmp_path) == ""
    assert "between 1 and 16 layers" in shrink_form.summary(fresh_helper, str(teacher), 40, tmp_path)
    from studio.command import page_overrides

    overrides = page_overrides("quickstart-cpu", None, {"train.mode": "distill", "distill.teacher": str(teacher),
                                                        "distill.shrink_layers": 8})
    assert "distill.shrink_layers=8" in overrides
    off = page_overrides("quickstart-cpu", None, {"train.mode": "distill", "distill.teacher": str(teacher),
                                                  "distill.shrink_layers": 0})
    assert not any(o.startswith("distill.shrink_layers") for o in off)
