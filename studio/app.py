"""The Studio: a Gradio Blocks page assembled from the tab modules in `TAB_MODULES`, which share a run's
settings through `StudioContext`. Building it imports no torch."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlsplit

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from slm_core.errors import SLMError  # noqa: E402
from slm_core.infer.guard import allowed_hosts, is_loopback  # noqa: E402
from slm_core.run import runs  # noqa: E402
from studio.helper import Helper  # noqa: E402
from studio.runner import Runner  # noqa: E402
from studio.security import LoginLimiter, PathPolicy, guarded_app, launch_problem  # noqa: E402
from studio.style import CSS  # noqa: E402

TAB_MODULES: tuple[str, ...] = (
    "studio.tabs.model",
    "studio.tabs.data",
    "studio.tabs.train",
    "studio.tabs.runs",
    "studio.tabs.chat",
    "studio.tabs.compare",
    "studio.tabs.serve",
    "studio.tabs.quantize",
    "studio.tabs.evaluate",
    "studio.tabs.export",
)
# Pages (and API clients) whose server-side state Gradio keeps, least recently used dropped first: each holds
# a copy of the page's config, and Gradio's default of 10,000 let the server grow with every reload and client
# (benchmarks/bench_studio_memory.py). A page that polls (the Train tab's timer) stays among the most recent.
STATE_SESSIONS = 100


@dataclass
class StudioContext:
    """What tabs share while the page is built (and, through the runner, while it runs)."""
    runs_dir: Path
    runner: Runner
    helper: Optional[Helper] = None  # torch-using slm_core calls, out of the server process
    fields: dict[str, Any] = field(default_factory=dict)  # "section.key" → component: the run's settings
    shared: dict[str, Any] = field(default_factory=dict)  # other components one tab reads from another
    on_load: list[dict] = field(default_factory=list)  # demo.load(**kwargs) when a page opens
    finalizers: list[Callable[["StudioContext"], None]] = field(default_factory=list)  # after all tabs exist
    tabs: dict[str, Any] = field(default_factory=dict)  # title → gr.Tab
    paths: Optional[PathPolicy] = None  # the folders the page may read (studio.security.check_path)
    exposed_without_login: bool = False  # --insecure beyond loopback: only this machine may allow folders
    judge_urls: list[str] = field(default_factory=list)  # judge endpoints beyond loopback (launch.py --judge-url)

    def __post_init__(self) -> None:
        if self.helper is None:
            self.helper = Helper(runs_dir=self.runs_dir, allow_list=self.paths)

    def field_values(self, values: Sequence[Any]) -> dict[str, Any]:
        """Event inputs `*ctx.fields.values()` back to {"section.key": value}."""
        return dict(zip(self.fields.keys(), values))


def theme() -> gr.themes.Base:
    # System fonts only: the default theme would fetch Google Fonts, and the Studio works offline.
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="slate", neutral_hue="slate",
                          font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])


def _header(ctx: StudioContext) -> None:
    from slm_core.system import gpu_info, system_memory

    memory, gpus = system_memory(), gpu_info()
    gpu_text = ", ".join(f"{g['name']} ({g['total_mb'] / 1024:.0f} GB)" for g in gpus) or "no GPU found (training uses the CPU)"
    gr.HTML(f"""<div class="slm-header"><div class="slm-title">SLM Studio</div>
<div class="slm-subtitle">Train, distill and fine-tune small language models on this machine, then chat with them.</div>
<div class="slm-machine">{memory['cpu_count']} CPU cores · {memory['total_mb'] / 1024:.1f} GB RAM · {gpu_text}
· runs in <code>{ctx.runs_dir}</code></div></div>""")


def build_app(runs_dir: Optional[str | Path] = None, tabs: Sequence[str] = TAB_MODULES,
              allow_paths: Sequence[str | Path] = (), judge_urls: Sequence[str] = ()) -> gr.Blocks:
    """The whole page. `runs_dir`: where runs live (default $SLM_RUNS_DIR or ./runs); `allow_paths`: folders
    beyond the runs dir and the uploads that the page may read (launch.py --allow-path); `judge_urls`: LLM
    judge endpoints beyond this machine's that the page may call (launch.py --judge-url)."""
    paths = PathPolicy(runs.runs_dir(runs_dir), allow_paths)
    ctx = StudioContext(runs_dir=paths.runs_dir, runner=Runner(paths.runs_dir, allow_list=paths), paths=paths,
                        judge_urls=list(judge_urls))
    with gr.Blocks(title="SLM Studio", analytics_enabled=False, fill_width=True) as demo:
        _header(ctx)
        with gr.Tabs(elem_id="slm-tabs"):
            for module_name in tabs:
                module = importlib.import_module(module_name)
                with gr.Tab(module.TITLE, id=module.TITLE.lower(), elem_id=f"tab-{module.TITLE.lower()}") as tab:
                    ctx.tabs[module.TITLE] = tab
                    module.build(ctx)
        for finalize in ctx.finalizers:
            finalize(ctx)
        for kwargs in ctx.on_load:
            demo.load(**{"api_visibility": "private", "show_progress": "hidden", **kwargs})
    demo.studio = ctx  # tests and benchmarks reach the runner through it
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           auth: Optional[tuple[str, str]] = None, insecure: bool = False, allow_hosts: Sequence[str] = (),
           login_limiter: Optional[LoginLimiter] = None, secret: Optional[str] = None, **kwargs: Any) -> Any:
    """Serve the page behind studio.security's guard (Host/Origin checks, login throttling). Refuses
    (SLMError) to serve beyond loopback or through --share without `auth`, unless `insecure`. `secret`: only
    requests carrying it are served (the desktop window, studio.desktop.secret)."""
    problem = launch_problem(host, share, auth, insecure)
    if problem:
        raise SLMError(problem)
    demo.studio.exposed_without_login = not auth and (share or not is_loopback(host))
    demo.studio.runner.start_queue_worker()  # queued runs start even when no page is open
    hosts = allowed_hosts(host, allow_hosts)
    block = not kwargs.pop("prevent_thread_lock", False)
    result = demo.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, share=share, auth=auth, theme=theme(), css=CSS,
        show_error=True, footer_links=["api", "settings"], _app=guarded_app(hosts, port, login_limiter, secret),
        prevent_thread_lock=True, **{"state_session_capacity": STATE_SESSIONS, **kwargs})
    if demo.share_url:
        hosts.add((urlsplit(demo.share_url).hostname or "").lower())  # the tunnel forwards its own Host
    if block:
        demo.block_thread()
    return result
