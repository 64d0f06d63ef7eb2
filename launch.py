"""`python launch.py`: the SLM Studio on http://127.0.0.1:7860 (offline, analytics off).

Binds to this machine only unless --host or --share says otherwise, and warns when the page is
reachable from elsewhere without --auth: anyone who reaches it can start runs and read files the
runs point at.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Start the SLM Studio web app.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                                                            "0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs network)")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    parser.add_argument("--runs-dir", default=None, help="where runs live (default: $SLM_RUNS_DIR or ./runs)")
    parser.add_argument("--inbrowser", action="store_true", help="open a browser tab")
    parser.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                        help="a folder the page may read data and models from, beyond the runs dir and the uploads "
                             "(repeatable)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="another host name the page may be reached by, e.g. behind a reverse proxy (repeatable)")
    parser.add_argument("--judge-url", action="append", default=[], metavar="URL",
                        help="an LLM judge endpoint beyond this machine that the page may call, e.g. a hosted "
                             "OpenAI-compatible API (repeatable; endpoints on this machine need no flag)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow --host beyond loopback or --share without --auth (anyone who reaches it can "
                             "start training)")
    args = parser.parse_args(argv)
    if args.auth is not None and ":" not in args.auth:
        parser.error("--auth takes USER:PASSWORD")
    for folder in args.allow_path:
        if not os.path.isdir(os.path.expanduser(folder)):
            parser.error(f"--allow-path {folder}: not a folder")
    return args


def exposure_warning(args: argparse.Namespace):
    """The warning to print when the page is reachable from other machines without a login, else None."""
    from slm_core.infer.guard import is_loopback

    if (args.share or not is_loopback(args.host)) and not args.auth:
        return ("WARNING: the Studio is reachable from other machines and has no login (--insecure); anyone who "
                "reaches it can start training. Add --auth USER:PASSWORD.")
    return None


def main(argv=None) -> None:
    args = parse_args(argv)
    from studio.security import launch_problem

    problem = launch_problem(args.host, args.share, args.auth, args.insecure)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    warning = exposure_warning(args)
    if warning:
        print(warning, file=sys.stderr)
    from studio.app import build_app, launch

    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    demo = build_app(args.runs_dir, allow_paths=args.allow_path, judge_urls=args.judge_url)
    print(f"runs in {demo.studio.runs_dir}", flush=True)
    launch(demo, host=args.host, port=args.port, share=args.share, auth=auth, insecure=args.insecure,
           allow_hosts=args.allow_host, inbrowser=args.inbrowser)


if __name__ == "__main__":
    main()
