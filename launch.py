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

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Start the SLM Studio web app.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                                                            "0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs network)")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    parser.add_argument("--runs-dir", default=None, help="where runs live (default: $SLM_RUNS_DIR or ./runs)")
    parser.add_argument("--inbrowser", action="store_true", help="open a browser tab")
    args = parser.parse_args(argv)
    if args.auth is not None and ":" not in args.auth:
        parser.error("--auth takes USER:PASSWORD")
    return args


def exposure_warning(args: argparse.Namespace):
    """The warning to print when the page is reachable from other machines without a login, else None."""
    if (args.share or args.host not in LOOPBACK) and not args.auth:
        return ("WARNING: the Studio is reachable from other machines and has no login; anyone who reaches it can "
                "start training and read local files. Add --auth USER:PASSWORD.")
    return None


def main(argv=None) -> None:
    args = parse_args(argv)
    warning = exposure_warning(args)
    if warning:
        print(warning, file=sys.stderr)
    from studio.app import build_app, launch

    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    demo = build_app(args.runs_dir)
    print(f"runs in {demo.studio.runs_dir}", flush=True)
    launch(demo, host=args.host, port=args.port, share=args.share, auth=auth, inbrowser=args.inbrowser)


if __name__ == "__main__":
    main()
