"""`slm serve` as an API for tools, in one run: scoring throughput (prompt tokens/s of echo + logprobs requests,
what lm-evaluation-harness sends) beside `slm eval`'s in-process scoring of the same sequences; completion
tokens/s with n=4 beside n=1 and beside 4 clients asking n=1 each; and lm-evaluation-harness's
`local-completions` through the server against `slm eval --tasks` (run_tasks) on the same model: accuracy,
the largest per-item log-likelihood difference, and wall time. A peer server (vLLM, llama.cpp's) is run where
installed; the script says when it is not.

    python benchmarks/bench_serve_api.py [--model RUN_OR_FOLDER] [--limit 40] [--requests 32]

Without --model: a random-init quickstart-size Llama (~4M, speed does not depend on training) with a BPE
tokenizer trained here, exported as a Hugging Face folder in a temporary directory. The server runs --dtype fp32
(exact: the numbers `slm eval` gives)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the checkout, and its tests for the server helpers

from serving import start_serve, stop_serve  # noqa: E402

TEXT = ("Once upon a time there was a little dog named Tom. Tom liked to run in the park with his friend "
        "Sue, a big red cat. One day they found a shiny ball under a tree, and they played until the sun went "
        "down. 'Thank you,' said Sue, 'this was the best day.' ") * 200
PROMPT = "Once upon a time there was a little dog"
NAME = "bench"


def make_model(work: Path) -> Path:
    from slm_core.config import ModelConfig, TokenizerConfig
    from slm_core.models.model import Transformer
    from slm_core.models.tokenizer import build_tokenizer
    from slm_core.post.export import export_model

    tokenizer = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=2048), [TEXT], progress=False)
    config = ModelConfig(family="llama", n_layer=4, n_head=4, n_kv_head=2, d_model=256, context_length=512,
                         vocab_size=tokenizer.n_vocab)
    export_model(Transformer(config), tokenizer, config, work / NAME, fmt="hf")
    return work / NAME


def post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def windows(ids: list[int], length: int, count: int) -> list[list[int]]:
    return [ids[i * 7:i * 7 + length] for i in range(count)]  # overlapping, all different


def timed(fn, jobs: list, clients: int) -> tuple[list, float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        out = list(pool.map(fn, jobs))
    return out, time.perf_counter() - start


def scoring_rows(base: str, loaded, prompts: list[list[int]]) -> float:
    """Prints the rows; returns slm serve's prompt tokens/s for lm-eval's request (max_tokens=1, 1 client)."""
    import torch

    from slm_core.post.harness import _score_pairs

    tokens = sum(len(p) for p in prompts)
    print(f"\n## Scoring: {len(prompts)} prompts of {len(prompts[0])} tokens (echo, logprobs=1)")
    print(f"{'path':<60}{'prompt tok/s':>14}{'vs slm eval':>13}")
    torch.set_num_threads(os.cpu_count() or 1)
    pairs = [(p[:1], p[1:]) for p in prompts]
    start = time.perf_counter()
    _score_pairs(loaded.model, pairs, loaded.model.config.context_length, 16, lambda done: None)
    peer = tokens / (time.perf_counter() - start)
    print(f"{'slm eval in process (batches of 16)':<60}{peer:>14,.0f}{1.0:>12.2f}x")
    lm_eval_rate = 0.0
    for label, extra, clients in (("serve, max_tokens=0, 1 client", {"max_tokens": 0}, 1),
                                  ("serve, max_tokens=0, 4 clients", {"max_tokens": 0}, 4),
                                  ("serve, max_tokens=1 (lm-eval's request), 1 client", {"max_tokens": 1}, 1),
                                  ("serve, one request of all prompts, max_tokens=0", None, 1)):
        if extra is None:
            _, seconds = timed(lambda _: post(base, "/v1/completions", {
                "model": NAME, "prompt": prompts, "max_tokens": 0, "echo": True, "logprobs": 1}), [0], 1)
        else:
            _, seconds = timed(lambda p: post(base, "/v1/completions", {
                "model": NAME, "prompt": p, "echo": True, "logprobs": 1, "temperature": 0, **extra}),
                prompts, clients)
        print(f"{label:<60}{tokens / seconds:>14,.0f}{tokens / seconds / peer:>12.2f}x")
        if "lm-eval" in label:
            lm_eval_rate = tokens / seconds
    return lm_eval_rate


def choices_rows(base: str, tokens: int) -> None:
    print(f"\n## Completions: {tokens} tokens per choice, temperature 0.8, prompt {PROMPT!r}")
    print(f"{'path':<60}{'completion tok/s':>18}{'vs n=1':>9}")
    ask = {"model": NAME, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0.8, "seed": 1}
    rows = []
    for label, body, clients in (("one request, n=1", ask, 1), ("one request, n=4", {**ask, "n": 4}, 1),
                                 ("4 clients, n=1 each", ask, 4)):
        post(base, "/v1/completions", {**body, "max_tokens": 4})  # warm the path
        out, seconds = timed(lambda b: post(base, "/v1/completions", b), [body] * clients, clients)
        generated = sum(o["usage"]["completion_tokens"] for o in out)
        rows.append(generated / seconds)
        print(f"{label:<60}{rows[-1]:>18,.0f}{rows[-1] / rows[0]:>8.2f}x")


def lm_eval_rows(paths: list[tuple[str, object, object]], loaded, tasks: list[str], limit: int) -> None:
    """Each task through each (label, lm_eval model, model_args); the first path is the reference."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from slm_core.post.tasks import task_configs

    print(f"\n## lm-evaluation-harness, {limit} items per task, side by side (first row: the reference)")
    print(f"{'task':<14}{'path':<44}{'acc':>7}{'acc_norm':>9}{'max |d loglik|':>16}{'seconds':>9}")
    for task in tasks:
        configs, _ = task_configs([task])
        rows = {}
        for label, model, args in paths:
            start = time.perf_counter()
            out = lm_eval.simple_evaluate(model=model, model_args=args, tasks=configs, limit=limit,
                                          task_manager=TaskManager(include_defaults=False), bootstrap_iters=0,
                                          log_samples=True, random_seed=1234)
            name = configs[0]["task"]
            samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
            rows[label] = (out["results"][name], [float(r[0]) for s in samples for r in s["filtered_resps"]],
                           time.perf_counter() - start)
        ref = rows[paths[0][0]][1]
        for label, (metrics, lls, seconds) in rows.items():
            diff = max(abs(a - b) for a, b in zip(lls, ref))
            print(f"{task:<14}{label:<44}{metrics['acc,none']:>7.3f}{metrics['acc_norm,none']:>9.3f}"
                  f"{diff:>16.2e}{seconds:>9.1f}")


def llama_cpp_server(loaded, work: Path):
    """(process, base) of llama-cpp-python's server on an f32 GGUF export of `loaded` (exact, as our fp32), or
    None with the reason printed."""
    import subprocess

    from serving import free_port

    from slm_core.post.export import export_model

    missing = [m for m in ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings")
               if importlib.util.find_spec(m) is None]
    if missing:
        print(f"llama.cpp's server (llama-cpp-python[server]): {', '.join(missing)} not installed; not measured")
        return None
    gguf = next(p for p in export_model(loaded.model, loaded.tokenizer, loaded.config, work / "gguf", fmt="gguf",
                                        gguf_type="f32") if p.suffix == ".gguf")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port),
                                "--n_ctx", str(loaded.model.config.context_length), "--logits_all", "True",
                                "--model_alias", NAME, "--n_threads", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(base + "/v1/models", timeout=2).close()
            return process, base
        except OSError:
            time.sleep(0.5)
    process.kill()
    print("llama.cpp's server did not start; not measured")
    return None


def peer_scoring_row(base: str, loaded, prompts: list[list[int]], ours: float) -> None:
    """llama.cpp's server scoring the same sequences as text (it takes no token ids), one client."""
    texts = [loaded.tokenizer.decode(p) for p in prompts]
    out, seconds = timed(lambda t: post(base, "/v1/completions", {
        "model": NAME, "prompt": t, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}), texts, 1)
    tokens = sum(o["usage"]["prompt_tokens"] for o in out)
    print(f"{'llama.cpp server (llama-cpp-python), max_tokens=1, 1 client':<60}{tokens / seconds:>14,.0f}"
          f"{'':>13}  (slm serve, same request: {ours:,.0f})")


def peers() -> None:
    print("\n## Peer servers")
    if importlib.util.find_spec("vllm") is None:
        print("vLLM: not installed here (a CUDA machine's server); not measured")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a run or model folder (default: a random-init ~4M Llama)")
    parser.add_argument("--limit", type=int, default=40, help="items per lm-eval task")
    parser.add_argument("--requests", type=int, default=32, help="scoring requests")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=128, help="tokens per choice in the n=4 rows")
    parser.add_argument("--tasks", default="opposites,story_ending")
    args = parser.parse_args()

    from slm_core.models.load import load_model
    from slm_core.post.harness import harness_model

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared machine: compare rows of "
          "one run only)")
    with tempfile.TemporaryDirectory() as work:
        model = args.model or str(make_model(Path(work)))
        loaded = load_model(model)
        loaded.model.float()
        params = sum(p.numel() for p in loaded.model.parameters())
        print(f"model: {model} ({params / 1e6:.1f}M parameters), slm serve --dtype fp32")
        process, base = start_serve(model, "--name", NAME, "--dtype", "fp32")
        peer = llama_cpp_server(loaded, Path(work))
        try:
            ids = loaded.tokenizer.encode(TEXT)
            prompts = windows(ids, args.prompt_tokens, args.requests)
            ours = scoring_rows(base, loaded, prompts)
            if peer:
                peer_scoring_row(peer[1], loaded, prompts, ours)
            choices_rows(base, args.tokens)
            paths = [("slm eval --tasks (in process)", harness_model(loaded), None),
                     ("local-completions -> slm serve", "local-completions",
                      f"model={NAME},base_url={base}/v1/completions,max_retries=1"),
                     ("gguf (lm-eval's llama.cpp model) -> slm serve", "gguf", f"base_url={base}")]
            if peer:
                paths.append(("gguf -> llama.cpp server", "gguf", f"base_url={peer[1]}"))
            lm_eval_rows(paths, loaded, [t for t in args.tasks.split(",") if t], args.limit)
        finally:
            stop_serve(process)
            if peer:
                peer[0].terminate()
                peer[0].wait(30)
    peers()


if __name__ == "__main__":
    main()
