"""Building the page: torch-free, the tabs in order, one module per tab, internal events off the API."""

import subprocess
import sys
from pathlib import Path

import pytest

from studio import app

REPO = Path(__file__).resolve().parents[2]


def test_building_the_app_imports_no_torch():
    # A fresh interpreter: this test process may have imported torch already.
    code = ("import sys; import studio.app as a; a.build_app(sys.argv[1]); "
            "import studio.chat_session, studio.compare_session, studio.jobs; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "no-such-runs")], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_tabs_come_in_order_and_each_is_one_module_with_build(tmp_path):
    assert [m.rsplit(".", 1)[-1] for m in app.TAB_MODULES] == ["model", "data", "train", "runs", "chat", "compare", "serve", "quantize", "evaluate", "export"]
    demo = app.build_app(tmp_path)
    assert list(demo.studio.tabs) == ["Model", "Data", "Train", "Runs", "Chat", "Compare", "Serve", "Quantize", "Evaluate", "Export"]
    # A new tab is one module: building with a subset (or a superset) of modules just works.
    assert list(app.build_app(tmp_path, tabs=["studio.tabs.runs"]).studio.tabs) == ["Runs"]
    # The run's settings from every tab are there for Start and the command box.
    for key in ("model.n_layer", "data.source", "tokenizer.kind", "train.lr", "train.mode", "lora.r",
                "distill.teacher"):
        assert key in demo.studio.fields


def test_only_the_intended_endpoints_are_public(tmp_path):
    demo = app.build_app(tmp_path)
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert {"train_start", "train_stop", "train_refresh", "chat", "compare", "quantize", "evaluate", "export"} <= public
    # The queue, a run's settings back in the form, and TensorBoard are actions a client may script too.
    assert {"queue_up", "queue_down", "queue_cancel", "train_load_settings", "train_clone", "train_save_recipe",
            "tensorboard"} <= public
    assert len(public) <= 26, sorted(public)


def test_launch_binds_to_loopback_and_warns_when_exposed_without_a_login():
    sys.path.insert(0, str(REPO))
    import launch

    args = launch.parse_args([])
    assert (args.host, args.port, args.share, args.auth) == ("127.0.0.1", 7860, False, None)
    assert launch.exposure_warning(args) is None
    assert "--auth" in launch.exposure_warning(launch.parse_args(["--host", "0.0.0.0"]))
    assert "--auth" in launch.exposure_warning(launch.parse_args(["--share"]))
    assert launch.exposure_warning(launch.parse_args(["--host", "0.0.0.0", "--auth", "me:secret"])) is None
    with pytest.raises(SystemExit):
        launch.parse_args(["--auth", "no-colon"])
