"""The Studio as a local app, not a file server (studio.security): a real Studio on a free port, driven
with plain HTTP (httpx, every event by its fn_index, private ones included) and gradio_client.

- Host and Origin: a foreign Host (DNS rebinding) or Origin is refused with 403 and never echoed in CORS.
- Paths: every endpoint that takes a path, a run name or a model folder is tried with a folder outside
  the allowed ones (shaped like a run and a model, full of a secret), a symlink out of the runs dir and
  a `..` escape: the secret never comes back and nothing outside is written. A matrix of bad inputs to
  named endpoints: each is an error in the page, no traceback, and the server stays up.
- Allowed paths still work (--allow-path, the uploads, a folder confirmed in the page).
- Launching: loopback without a login works; beyond loopback without --auth exits 2; failed logins are
  rate-limited.
"""

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

httpx = pytest.importorskip("httpx")

from slm_core.errors import SLMError  # noqa: E402
from studio.security import LoginLimiter, PathPolicy, StudioGuard, check_value, launch_problem, session_allow_ok  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SECRET = "TOPSECRET-7f3a9"
REFUSALS = ("outside the folders", "is not a run", "is not in the list of choices")  # the last: Gradio's own
# Page inputs that name a file, a folder, a run or a model, by label (the sweep fills them with bad paths).
PATH_LABELS = {"Source (what the run reads)": "file", "GPT-2 vocabulary folder (offline copy)": "dir",
               "Base model": "dir", "Teacher": "dir", "Run": "run", "Open run": "run", "Run A": "run",
               "Run B": "run", "Runs": "run", "Model": "dir", "Model A": "dir", "Model B": "dir", "Models": "dir",
               "Data": "file"}


def path_kind(block) -> str | None:
    """'file', 'dir' or 'run' for a page input that names one, else None."""
    if type(block).__name__ not in ("Dropdown", "Textbox"):
        return None
    return PATH_LABELS.get(getattr(block, "label", None))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_outside(root: Path) -> Path:
    """A folder outside every allowed one: a secret file, and a folder shaped like a finished run and a
    model, each file carrying the secret."""
    outside = root / "outside"
    run = outside / "run"
    (run / "checkpoints" / "best").mkdir(parents=True)
    (outside / "secret.txt").write_text(f"{SECRET}\n" * 50)
    (outside / "secret.yaml").write_text(f"description: {SECRET}\nmodel: {{n_layer: 1}}\n")
    (run / "status.json").write_text(json.dumps({"state": "finished", "step": 3, "error": SECRET}))
    (run / "config.yaml").write_text(f"secret: {SECRET}\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "note": SECRET}) + "\n")
    (run / "samples.jsonl").write_text(json.dumps({"step": 1, "samples": [SECRET]}) + "\n")
    (run / "log.txt").write_text(f"{SECRET}\n")
    (run / "checkpoints" / "best" / "state.json").write_text(json.dumps({"step": 1, "note": SECRET}))
    return outside


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


# ---- the policy and the guard, without a server ----------------------------------------------

def test_path_policy_allows_the_runs_dir_uploads_and_allowed_folders_only(tmp_path):
    outside = make_outside(tmp_path)
    runs_dir, data = tmp_path / "runs", tmp_path / "data"
    (runs_dir / "uploads").mkdir(parents=True)
    data.mkdir()
    (data / "a.txt").write_text("hello")
    (runs_dir / "link").symlink_to(outside / "run")
    (runs_dir / "uploads" / "up.txt").write_text("x")
    policy = PathPolicy(runs_dir, allowed=[data])
    assert policy.check(runs_dir / "uploads" / "up.txt") and policy.check(data / "a.txt")
    for bad in ("/etc/passwd", outside / "secret.txt", runs_dir / "link", runs_dir / ".." / "outside" / "run"):
        with pytest.raises(SLMError, match="outside the folders"):
            policy.check(bad)
    # Kinds: built-in corpora and Hub names are not paths; run names stay inside the runs dir.
    for source in ("builtin", "builtin:instructions", "roneneldan/TinyStories", ""):
        check_value(policy, "data", source)
    for name in ("../outside/run", str(outside / "run"), "link", ".."):
        with pytest.raises(SLMError):
            check_value(policy, "run", name)
    check_value(policy, "run", "some-run")
    with pytest.raises(SLMError):
        check_value(policy, "model", [str(data), str(outside / "run")])
    # Allowing a folder for the session; the whole file system never.
    assert policy.folder_to_offer("data", str(outside / "secret.txt")) == outside.resolve()
    policy.allow(outside / "secret.txt")
    assert policy.check(outside / "run" / "log.txt")
    with pytest.raises(SLMError, match="whole file system"):
        policy.allow("/")


def test_guard_accepts_only_this_studios_host_and_same_origin():
    guard = StudioGuard(None, {"127.0.0.1", "localhost", "::1"}, port=7860)
    ok = [{"host": "127.0.0.1:7860"}, {"host": "localhost:7860"}, {"host": "[::1]:7860"},
          {"host": "127.0.0.1:7860", "origin": "http://127.0.0.1:7860"},
          {"host": "localhost:7860", "origin": "http://localhost:7860"}]
    bad = [{"host": "evil.example:7860"}, {"host": "evil.example"}, {}, {"host": "127.0.0.1.evil.example:7860"},
           {"host": "127.0.0.1:7860", "origin": "http://evil.example"},
           {"host": "127.0.0.1:7860", "origin": "http://127.0.0.1:9999"},  # another local site, another origin
           {"host": "127.0.0.1:7860", "origin": "null"},
           {"host": "127.0.0.1:7860", "origin": "http://127.0.0.1:notaport"},
           {"host": "127.0.0.1:7861"}]
    assert [guard.problem(h) for h in ok] == [None] * len(ok)
    assert all(guard.problem(h) for h in bad)


def test_login_limiter_locks_a_client_after_five_failures_and_forgets_it_later():
    limiter = LoginLimiter(max_failures=5, window_s=60, lockout_s=0.3)
    for _ in range(4):
        limiter.record("1.2.3.4", ok=False)
    assert limiter.retry_after("1.2.3.4") == 0
    limiter.record("1.2.3.4", ok=False)
    assert limiter.retry_after("1.2.3.4") > 0 and limiter.retry_after("5.6.7.8") == 0
    time.sleep(0.35)
    assert limiter.retry_after("1.2.3.4") == 0


def test_serving_beyond_loopback_needs_a_login_unless_insecure():
    assert launch_problem("127.0.0.1", False, None, False) is None
    assert launch_problem("localhost", False, None, False) is None
    assert "--auth" in launch_problem("0.0.0.0", False, None, False)
    assert "--auth" in launch_problem("127.0.0.1", True, None, False)  # --share
    assert launch_problem("0.0.0.0", False, ("me", "pw"), False) is None
    assert launch_problem("0.0.0.0", False, None, True) is None
    from studio.app import launch

    with pytest.raises(SLMError, match="--auth"):  # the Python API refuses too, before serving anything
        launch(None, host="0.0.0.0")
    # Exposed without a login (--insecure), only this machine's own browser may allow more folders.
    assert session_allow_ok(SimpleNamespace(client=SimpleNamespace(host="127.0.0.1")), exposed_without_login=True)
    assert not session_allow_ok(SimpleNamespace(client=SimpleNamespace(host="10.0.0.7")), exposed_without_login=True)
    assert session_allow_ok(SimpleNamespace(client=SimpleNamespace(host="10.0.0.7")), exposed_without_login=False)
    out = subprocess.run([sys.executable, "launch.py", "--host", "0.0.0.0", "--port", str(free_port())], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--auth" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "launch.py", "--allow-path", str(REPO / "no-such-folder"), "--port",
                          str(free_port())], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "not a folder" in out.stderr and "Traceback" not in out.stderr


# ---- a real Studio ------------------------------------------------------------------------------

class Studio:
    """A launched Studio and an httpx client that calls its events the way the page does."""

    def __init__(self, demo, port: int, http):
        self.demo, self.base, self.http = demo, f"http://127.0.0.1:{port}", http

    def call(self, fn_index: int, data: list) -> tuple[dict, str]:
        """(the process_completed message, every byte the server streamed back) for one event."""
        session = uuid.uuid4().hex
        joined = self.http.post(f"{self.base}/gradio_api/queue/join",
                                json={"data": data, "fn_index": fn_index, "session_hash": session})
        assert joined.status_code == 200, joined.text
        seen = ""
        with self.http.stream("GET", f"{self.base}/gradio_api/queue/data", params={"session_hash": session},
                              timeout=120) as stream:
            for line in stream.iter_lines():
                seen += line
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message, seen
        raise AssertionError(f"no result from fn {fn_index}: {seen[-500:]}")

    def inputs(self, api_name: str, *first) -> list:
        """Values for every input of a named endpoint: `first`, then the page's defaults for the rest."""
        fn = next(fn for fn in self.demo.fns.values() if fn.api_name == api_name)
        return [*first, *[block.value for block in fn.inputs[len(first):]]]


def _launch(root: Path, name: str, auth=None, limiter=None, allow=()):
    from studio.app import build_app, launch

    runs_dir = root / name
    (runs_dir / "uploads").mkdir(parents=True)
    demo = build_app(runs_dir, allow_paths=allow)
    port = free_port()
    launch(demo, port=port, auth=auth, login_limiter=limiter, prevent_thread_lock=True, quiet=True)
    return demo, port


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("security")
    outside = make_outside(root)
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "ok.txt").write_text("An allowed little corpus. " * 40)
    return root, outside, allowed


@pytest.fixture(scope="module")
def studio(world):
    root, outside, allowed = world
    demo, port = _launch(root, "runs", allow=[allowed])
    runs_dir = demo.studio.runs_dir
    (runs_dir / "link").symlink_to(outside / "run")
    (runs_dir / "uploads" / "link.txt").symlink_to(outside / "secret.txt")
    with httpx.Client(timeout=60) as http:
        yield Studio(demo, port, http)
    demo.close()


@pytest.fixture(scope="module")
def studio_with_login(world):
    root, _, _ = world
    demo, port = _launch(root, "runs-auth", auth=("me", "right-password"),
                         limiter=LoginLimiter(max_failures=5, window_s=60, lockout_s=3))
    with httpx.Client(timeout=60) as http:
        yield Studio(demo, port, http)
    demo.close()


def _sweep_values(studio: Studio, outside: Path, relative: bool) -> dict[str, str]:
    """What each kind of path input gets: absolute paths outside, or escapes that look local."""
    if relative:
        return {"file": str(studio.demo.studio.runs_dir / "uploads" / "link.txt"), "dir": "link", "run": "link"}
    return {"file": str(outside / "secret.txt"), "dir": str(outside / "run"), "run": str(outside / "run")}


def _sweep_inputs(fn, values: dict[str, str]) -> list:
    data = []
    for block in fn.inputs:
        kind = path_kind(block)
        if kind:
            value = values[kind]
            data.append([value] if getattr(block, "multiselect", False) else value)
        elif type(block).__name__ == "Chatbot":
            data.append([])
        elif type(block).__name__ == "Textbox":
            data.append("Once upon a time")  # chat prompts: something to answer
        else:
            value = block.value
            data.append(value if isinstance(value, (str, int, float, bool, list, type(None))) else None)
    return data


@pytest.mark.parametrize("relative", [False, True], ids=["absolute-paths", "symlinks-and-names"])
def test_no_endpoint_reads_or_writes_outside_the_allowed_folders(studio, world, relative, capfd):
    """Every event (public or private) with a path-like input, called with paths outside the allowed folders:
    the secret never comes back, nothing outside changes, no traceback, and the reading ones say why."""
    _, outside, _ = world
    before = snapshot(outside)
    values = _sweep_values(studio, outside, relative)
    swept, refused = [], []
    for index, fn in studio.demo.fns.items():
        if fn.fn is None or not any(path_kind(b) for b in fn.inputs):
            continue
        if any(event == "select" for _, event in fn.targets):  # table clicks need the browser's event data
            continue
        message, seen = studio.call(index, _sweep_inputs(fn, values))
        swept.append(fn.api_name or fn.name)
        assert SECRET not in seen, (fn.api_name or fn.name, seen[-800:])
        if not message.get("success"):
            error = str(message.get("output", {}).get("error"))
            assert any(r in error for r in REFUSALS), (fn.api_name or fn.name, error)
            refused.append(fn.api_name or fn.name)
    assert snapshot(outside) == before
    assert len(swept) >= 25, swept
    # Each public endpoint that reads a path refused it (private ones are in the matrix below).
    assert {"data_preview", "data_tokenize", "train_start", "train_refresh", "train_stop", "train_resume", "chat",
            "compare", "quantize", "evaluate", "export"} <= set(refused), refused
    # Gradio's own file routes serve only what it stored, not what a page names.
    for path in ("/etc/passwd", outside / "secret.txt", studio.demo.studio.runs_dir / "uploads" / "link.txt"):
        for route in ("file=", "file/"):
            response = httpx.get(f"{studio.base}/gradio_api/{route}{path}")
            assert response.status_code >= 400 and SECRET not in response.text and "root:" not in response.text
    assert_no_traceback(capfd.readouterr().err)
    assert httpx.get(f"{studio.base}/config").status_code == 200  # still up


def assert_no_traceback(log: str) -> None:
    """No traceback in the server's log but Gradio's own refusals, which it prints: a value a dropdown does
    not offer, a file path it did not store (the page shows the error)."""
    gradio_own = log.count("is not in the list of choices") + log.count("InvalidPathError: Cannot move")
    assert log.count("Traceback") == gradio_own, log[-3000:]


def _private(studio: Studio, component_label: str, event: str = "change") -> int:
    """The fn_index of the (private) event `event` of the component labelled `component_label`."""
    ids = {b._id for b in studio.demo.blocks.values() if getattr(b, "label", None) == component_label}
    return next(i for i, fn in studio.demo.fns.items()
                if fn.fn is not None and any(t[0] in ids and t[1] == event for t in fn.targets))


def test_bad_inputs_to_studio_endpoints_are_errors_in_the_page(studio, world, capfd):
    """A matrix of bad inputs through the named (and a few private) endpoints: each answers with an error,
    no traceback reaches the server's log, nothing outside changes, and the server keeps serving."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    _, outside, _ = world
    runs_dir = studio.demo.studio.runs_dir
    before = snapshot(outside)
    client = Client(studio.base + "/", verbose=False)
    sampling = [0.8, 50, 1.0, 1.1, 8, "0"]
    preview = lambda source, max_chars=0: ("/data_preview", [source, "", "", max_chars])  # noqa: E731
    cases = {
        "preview /etc/passwd": (preview("/etc/passwd"), "outside the folders"),
        "preview a secret file": (preview(str(outside / "secret.txt")), "outside the folders"),
        "preview a .. escape": (preview(str(runs_dir / ".." / "outside" / "secret.txt")), "outside the folders"),
        "preview a symlink out of uploads": (preview(str(runs_dir / "uploads" / "link.txt")), "outside the folders"),
        "preview a folder outside": (preview(str(outside)), "outside the folders"),
        "preview a missing file inside": (preview(str(runs_dir / "uploads" / "nope.txt")), "not found"),
        "preview an unknown built-in": (preview("builtin:nope"), "built-in"),
        "refresh a run outside": (("/train_refresh", [str(outside / "run"), "step", False]), "is not a run"),
        "refresh a .. run name": (("/train_refresh", ["../outside/run", "step", False]), "is not a run"),
        "refresh a symlinked run": (("/train_refresh", ["link", "step", False]), "is not a run"),
        "stop a run outside": (("/train_stop", [str(outside / "run")]), "is not a run"),
        "save a missing run": (("/train_save", ["no-such-run"]), "no run named"),
        "pause with no run": (("/train_pause", [None]), "No run selected"),
        "chat with a folder outside": (("/chat", ["hi", [], str(outside / "run"), "best", *sampling]),
                                       "outside the folders"),
        "chat with /etc": (("/chat", ["hi", [], "/etc", "best", *sampling]), "outside the folders"),
        "compare with one side outside": (("/compare", ["hi", [], [], str(runs_dir), str(outside / "run"),
                                                        *sampling]), "outside the folders"),
        "quantize a run outside": (("/quantize", [str(outside / "run"), "best", "int8", 64, False, 0]),
                                   "outside the folders"),
        "quantize a missing run": (("/quantize", ["no-such-run", "best", "int8", 64, False, 0]), "no run named"),
        "evaluate a model outside": (("/evaluate", [[str(outside / "run")], "best", "", "val", 0, 0]),
                                     "outside the folders"),
        "evaluate on /etc/passwd": (("/evaluate", [[], "best", "/etc/passwd", "val", 0, 0]), "outside the folders"),
        "evaluate nothing": (("/evaluate", [[], "best", "", "val", 0, 0]), "Pick one or more models"),
        "export a run outside": (("/export", [str(outside / "run"), "best", "hf", "f16"]), "outside the folders"),
        "export nothing": (("/export", [None, "best", "hf", "f16"]), "Pick a model"),
        "export in an unknown format": (("/export", ["no-such-run", "best", "zip", "f16"]), "zip"),
    }
    for case, ((api_name, args), expected) in cases.items():
        try:
            result = client.predict(*args, api_name=api_name)
        except AppError as error:
            result = str(error)
        text = json.dumps(result, default=str)
        assert expected in text, (case, text[:600])
        assert SECRET not in text, case
    # Private events the page fires: open, compare, delete a run outside; an upload of a path Gradio did not store.
    for label, event, data in [("Open run", "change", [str(outside / "run")]),
                               ("Run A", "change", ["../outside/run", "x"]),
                               ("Runs", "change", [["link"], "val_loss"])]:
        message, seen = studio.call(_private(studio, label, event), data)
        assert not message["success"] and any(r in seen for r in REFUSALS) and SECRET not in seen, (label, seen[-400:])
    delete = next(i for i, fn in studio.demo.fns.items() if fn.name == "do_delete")
    message, seen = studio.call(delete, ["../outside/run"])
    assert not message["success"] and any(r in seen for r in REFUSALS)
    # Start with a setting naming a file or model outside, a recipe file outside, a run name that climbs out.
    start = next(i for i, fn in studio.demo.fns.items() if fn.api_name == "train_start")
    fields = studio.demo.studio.fields
    for key, value, expected in [("data.source", str(outside / "secret.txt"), "outside the folders"),
                                 ("tokenizer.path", str(outside), "outside the folders"),
                                 ("train.init_from", "../outside/run", "outside the folders"),
                                 ("distill.teacher", str(outside / "run"), "outside the folders"),
                                 ("recipe", str(outside / "secret.yaml"), "outside the folders"),
                                 ("name", "../escape", "is invalid")]:
        inputs = studio.demo.fns[start].inputs
        data = [block.value for block in inputs]
        target = fields.get(key) or next(b for b in inputs if getattr(b, "label", "").lower().startswith(
            "recipe" if key == "recipe" else "run name"))
        data[next(i for i, block in enumerate(inputs) if block is target)] = value
        message, seen = studio.call(start, data)
        assert expected in seen and SECRET not in seen, (key, seen[-400:])
        assert key == "name" or not message["success"]  # a bad name is the Train tab's own error message
    assert not (runs_dir.parent / "escape").exists() and studio.demo.studio.runner.active() is None
    upload = _private(studio, "Upload files", "upload")
    message, seen = studio.call(upload, [[{"path": str(outside / "secret.txt"), "meta": {"_type": "gradio.FileData"}}]])
    assert not message["success"] and SECRET not in seen
    assert snapshot(outside) == before and (outside / "run").is_dir()
    assert_no_traceback(capfd.readouterr().err)
    assert httpx.get(f"{studio.base}/config").status_code == 200


def test_allowed_folders_still_work_and_the_page_can_allow_one(studio, world):
    from gradio_client import Client

    _, outside, allowed = world
    runs_dir = studio.demo.studio.runs_dir
    client = Client(studio.base + "/", verbose=False)
    summary, records, _ = client.predict(str(allowed / "ok.txt"), "", "", 0, api_name="/data_preview")  # --allow-path
    assert "1 documents" in summary and "allowed little corpus" in records
    (runs_dir / "uploads" / "up.txt").write_text("An uploaded corpus. " * 30)
    summary, records, _ = client.predict(str(runs_dir / "uploads" / "up.txt"), "", "", 0, api_name="/data_preview")
    assert "uploaded corpus" in records
    # A folder typed into the page: the preview is refused, the page offers the folder, a click allows it.
    elsewhere = outside.parent / "typed"
    elsewhere.mkdir(exist_ok=True)
    (elsewhere / "t.txt").write_text("Typed into the page. " * 30)
    with pytest.raises(Exception, match="outside the folders"):
        client.predict(str(elsewhere / "t.txt"), "", "", 0, api_name="/data_preview")
    source_box = studio.demo.studio.fields["data.source"]
    offer = next(i for i, fn in studio.demo.fns.items() if fn.name == "<lambda>" and fn.inputs == [source_box]
                 and any(getattr(o, "elem_id", None) == "data-allow" for o in fn.outputs))
    # The offer follows the preview's failure (the page runs a .then only after success).
    config = studio.demo.fns[offer].get_config()
    assert config["trigger_only_on_failure"] and studio.demo.fns[config["trigger_after"]].api_name == "data_preview"
    session = uuid.uuid4().hex
    # Two events in one page session: the offer fills the session's folder, "Allow this folder" adds it.
    for fn_index, data in ((offer, [str(elsewhere / "t.txt")]),
                           (next(i for i, fn in studio.demo.fns.items() if fn.name == "allow"
                                 and any(getattr(o, "elem_id", None) == "data-allow" for o in fn.outputs)), [None])):
        studio.http.post(f"{studio.base}/gradio_api/queue/join",
                         json={"data": data, "fn_index": fn_index, "session_hash": session})
        with studio.http.stream("GET", f"{studio.base}/gradio_api/queue/data", params={"session_hash": session}) as s:
            seen = "".join(line for line in s.iter_lines())
        assert "process_completed" in seen
    assert "Allowed" in seen and str(elsewhere.resolve()) in seen
    # The allowed folder now reads; its sibling with the secret stays refused.
    summary, records, _ = client.predict(str(elsewhere / "t.txt"), "", "", 0, api_name="/data_preview")
    assert "Typed into the page" in records
    with pytest.raises(Exception, match="outside the folders"):
        client.predict(str(outside / "secret.txt"), "", "", 0, api_name="/data_preview")


def test_foreign_host_and_origin_are_refused_and_never_echoed(studio, studio_with_login):
    for server in (studio, studio_with_login):
        port = server.base.rsplit(":", 1)[1]
        ok = httpx.get(f"{server.base}/config", headers={"Origin": server.base})
        assert ok.status_code in (200, 401) and ok.headers.get("access-control-allow-origin") in (None, server.base)
        assert httpx.get(f"http://localhost:{port}/config").status_code in (200, 401)
        for headers in ({"Host": f"evil.example:{port}"},
                        {"Host": f"evil.example:{port}", "Origin": "http://evil.example"},
                        {"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": "http://127.0.0.1:1"}):
            for method, path in (("GET", "/"), ("GET", "/config"), ("POST", "/gradio_api/queue/join"),
                                 ("POST", "/gradio_api/run/data_preview"), ("POST", "/login"),
                                 ("OPTIONS", "/gradio_api/queue/join")):
                extra = {"Access-Control-Request-Method": "POST"} if method == "OPTIONS" else {}
                body = {"data": server.inputs("data_preview", "/etc/passwd")} if method == "POST" else None
                response = httpx.request(method, server.base + path, headers={**headers, **extra}, json=body)
                assert response.status_code == 403, (headers, path, response.status_code)
                assert "access-control-allow-origin" not in response.headers
                assert "root:" not in response.text


def test_with_a_login_paths_are_still_checked_and_failed_logins_are_throttled(studio_with_login, world):
    from gradio_client import Client

    _, outside, _ = world
    server = studio_with_login
    assert server.http.post(f"{server.base}/gradio_api/run/data_preview",
                            json={"data": server.inputs("data_preview", "/etc/passwd")}).status_code == 401
    login = httpx.Client(timeout=60)
    assert login.post(f"{server.base}/login", data={"username": "me", "password": "right-password"}).status_code == 200
    answer = login.post(f"{server.base}/gradio_api/run/data_preview",
                        json={"data": server.inputs("data_preview", str(outside / "secret.txt"))})
    assert "outside the folders" in answer.text and SECRET not in answer.text
    client = Client(server.base + "/", auth=("me", "right-password"), verbose=False)
    with pytest.raises(Exception, match="is not a run"):
        client.predict(str(outside / "run"), "step", False, api_name="/train_refresh")
    # Five wrong passwords, then even the right one waits.
    codes = [httpx.post(f"{server.base}/login", data={"username": "me", "password": f"guess{i}"}).status_code
             for i in range(6)]
    assert codes == [400] * 5 + [429], codes
    locked = httpx.post(f"{server.base}/login", data={"username": "me", "password": "right-password"})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    time.sleep(3.2)
    assert httpx.post(f"{server.base}/login", data={"username": "me", "password": "right-password"}).status_code == 200
    login.close()


def test_the_server_keeps_a_bounded_number_of_page_sessions(studio, tmp_path):
    """What grew with use: Gradio keeps ~0.6 MB of state per page session (each reload, each API client),
    10,000 of them by default. The Studio keeps the most recent STATE_SESSIONS, and the run-file cache the
    most recent files (benchmarks/bench_studio_memory.py measures the RSS)."""
    from studio.app import STATE_SESSIONS
    from studio.watch import JsonlCache

    holder = studio.demo.server_app.state_holder
    for _ in range(STATE_SESSIONS + 20):
        holder[uuid.uuid4().hex]
    assert len(holder.session_data) <= STATE_SESSIONS
    cache = JsonlCache(max_files=3)
    for i in range(5):
        (tmp_path / f"{i}.jsonl").write_text(json.dumps({"step": i}) + "\n")
        assert cache.rows(tmp_path / f"{i}.jsonl") == [{"step": i}]
    assert len(cache._files) == 3 and cache.rows(tmp_path / "0.jsonl") == [{"step": 0}]  # evicted: read again


def test_report_card_tasks_that_name_files_go_through_the_allow_list(studio, world, capfd):
    """A task typed in the report panel is opened as a file by the engine whatever its name: one without a
    .jsonl suffix, or a symlink in an allowed folder pointing out of it, is refused like any other path and
    no byte of the target comes back."""
    _, outside, _ = world
    secret_task = outside / "secret-task"
    secret_task.write_text(json.dumps({SECRET: 1, "question": SECRET}) + "\n")
    link = studio.demo.studio.runs_dir / "uploads" / "task-link"
    link.symlink_to(secret_task)
    index = next(i for i, fn in studio.demo.fns.items() if fn.api_name == "report_cards")
    for task in (str(secret_task), str(link)):
        message, seen = studio.call(index, [[], "best", [], task, 5, "", "", "", "", 10, 0])
        assert not message["success"] and "outside the folders" in seen, (task, seen[-400:])
        assert SECRET not in seen, task
    assert_no_traceback(capfd.readouterr().err)


def test_every_text_input_of_every_event_is_refused_a_link_out(studio, world, capfd):
    """Not only inputs labelled as paths: every textbox and dropdown of every event (public or private) gets a
    symlink in the uploads that points at a secret outside; no byte of it comes back and nothing outside changes."""
    _, outside, _ = world
    before = snapshot(outside)
    link = str(studio.demo.studio.runs_dir / "uploads" / "link.txt")
    swept = []
    for index, fn in studio.demo.fns.items():
        texts = [type(b).__name__ in ("Textbox", "Dropdown") for b in fn.inputs]
        if fn.fn is None or not any(texts) or any(event == "select" for _, event in fn.targets):
            continue
        data = [([link] if getattr(b, "multiselect", False) else link) if is_text
                else [] if type(b).__name__ == "Chatbot"
                else b.value if isinstance(b.value, (str, int, float, bool, list, type(None))) else None
                for b, is_text in zip(fn.inputs, texts)]
        message, seen = studio.call(index, data)
        swept.append(fn.api_name or fn.name)
        assert SECRET not in seen, (fn.api_name or fn.name, seen[-800:])
    assert snapshot(outside) == before
    assert {"report_cards", "data_preview", "chat", "evaluate"} <= set(swept), swept
    assert_no_traceback(capfd.readouterr().err)


def test_the_judge_endpoint_is_this_machine_or_one_the_studio_was_started_with(studio):
    """The page makes the server fetch the judge URL: a loopback endpoint or one given with --judge-url only."""
    from studio.security import check_judge_url

    index = next(i for i, fn in studio.demo.fns.items() if fn.api_name == "report_cards")
    for url in ("http://169.254.169.254/latest/meta-data", "http://10.0.0.1:8000/v1", "file:///etc/passwd",
                "http://attacker.example/v1"):
        message, seen = studio.call(index, [[], "best", ["arithmetic"], "", 5, url, "", "", "", 10, 0])
        assert not message["success"] and ("--judge-url" in seen or "http://" in seen), (url, seen[-400:])
    assert check_judge_url("http://127.0.0.1:8000/v1") and check_judge_url("http://localhost:11434/v1")
    assert check_judge_url("https://api.example.com/v1/", ["https://api.example.com/v1"])
    with pytest.raises(SLMError, match="--judge-url https://api.example.com:443"):
        check_judge_url("https://api.example.com/v1")


def test_the_helper_process_enforces_the_page_folders_itself(world):
    """The check is the engine's, in the process that opens the file: a call that reached the helper without
    the page's check (a new event someone forgot to gate) is still refused."""
    from slm_core.allowlist import AllowList
    from studio.helper import Helper

    _, outside, allowed = world
    link = allowed / "helper-link.txt"
    link.symlink_to(outside / "secret.txt")
    helper = Helper(allow_list=AllowList([allowed]))
    try:
        with pytest.raises(SLMError, match="outside the folders") as caught:
            helper.call("preview", {"data": {"source": str(link)}})
        assert SECRET not in str(caught.value)
        assert helper.call("preview", {"data": {"source": str(allowed / "ok.txt")}})["texts"]  # inside: works
    finally:
        helper.close()
