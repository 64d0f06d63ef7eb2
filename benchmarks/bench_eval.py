"""Evaluation beyond perplexity, measured: time to score a model on the shipped tasks through our
harness adapter, side by side with lm-evaluation-harness's own Hugging Face model ("hf") on the
model's HF export (same tasks, same items), and the agreement of two judge runs with different
seeds.

    python benchmarks/bench_eval.py RUN [--limit N] [--judge URL | --serve-judge MODEL] [--judge-limit N]

RUN: a run name or folder (e.g. a finished quickstart-cpu run). --serve-judge starts `slm serve MODEL`
on a free loopback port for the judge runs and stops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SHIPPED = ["story_ending", "opposites", "arithmetic"]


def time_ours(run: str, limit) -> tuple[float, dict]:
    from slm_core.models.load import load_model
    from slm_core.post.harness import run_tasks

    started = time.perf_counter()
    result = run_tasks(load_model(run), SHIPPED, limit=limit)
    return time.perf_counter() - started, result["tasks"]


def time_hf_peer(run: str, limit) -> tuple[float, dict]:
    """lm-eval's HFLM on our HF export: the harness's reference way to score a transformers model."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from slm_core.models.load import load_model
    from slm_core.post.export import export_model
    from slm_core.post.harness import _scores
    from slm_core.post.tasks import task_configs

    loaded = load_model(run)
    folder = Path(tempfile.mkdtemp(prefix="bench-eval-hf-")) / "hf"
    export_model(loaded.model, loaded.tokenizer, loaded.config, folder, "hf", source=str(run))
    configs, _ = task_configs(SHIPPED)
    started = time.perf_counter()
    output = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={folder},dtype=float32",
                                     tasks=configs, limit=limit, task_manager=TaskManager(include_defaults=False),
                                     batch_size=16, device="cpu", bootstrap_iters=0, log_samples=False)
    return time.perf_counter() - started, _scores(output)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def judge_agreement(run: str, url: str, limit: int) -> dict:
    from slm_core.models.load import load_model
    from slm_core.post.judge import Endpoint, agreement, judge_replies, load_prompts, model_replies

    items = model_replies(load_model(run), load_prompts(None, limit), seed=0)
    runs = [judge_replies(Endpoint(url, temperature=0.7), items, seed=seed) for seed in (0, 1)]
    return {"agreement": agreement(*runs), "unscored": [r["unscored"] for r in runs],
            "means": [r["means"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--limit", type=int, default=None, help="items per task (default: all 200)")
    parser.add_argument("--judge", default=None, help="an OpenAI-compatible endpoint for the judge runs")
    parser.add_argument("--serve-judge", default=None, help="a model to serve as the judge with `slm serve`")
    parser.add_argument("--judge-limit", type=int, default=10)
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()

    ours_s, ours = time_ours(args.run, args.limit)
    print(f"ours (slm_core.post.harness adapter): {ours_s:.1f} s")
    for name, row in ours.items():
        print(f"  {name}: {row}")
    if not args.skip_peer:
        peer_s, peer = time_hf_peer(args.run, args.limit)
        print(f"lm-eval 'hf' model on the HF export: {peer_s:.1f} s  (ours / peer time: {ours_s / peer_s:.2f}x)")
        for name, row in peer.items():
            print(f"  {name}: {row}")
    url, server = args.judge, None
    if args.serve_judge and not url:
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "slm_core", "serve", args.serve_judge, "--port", str(port)])
        url = f"http://127.0.0.1:{port}/v1"
        time.sleep(15)
    if url:
        try:
            print("judge, two runs with seeds 0 and 1 (temperature 0.7):", judge_agreement(args.run, url, args.judge_limit))
        finally:
            if server:
                server.terminate()


if __name__ == "__main__":
    main()
