"""Chat speed side by side, in one run: the Studio's default chat path, onnxruntime-genai's own loop, our
native torch path and transformers' `generate`, at batch 1 with 1 and 2 threads, for the quickstart-size
model (tiny-llama, ~4M) and a ~100M Llama; then `slm serve` with 1, 4 and 8 concurrent streaming clients.

Models are random-init (speed does not depend on training) with a BPE tokenizer trained here, exported to
Hugging Face and onnxruntime-genai folders in a temporary directory. Decode tokens/s counts tokens after
the first over the time after the first; TTFT is submit → first token. The Studio's native chat path runs in a
process of its own, as in the Studio (see slm_core.infer.openmp). The Chat page rows are the real page: `launch.py`
driven over the endpoint its Send button calls, read as the page prints each reply's speed. Targets (issue 9):
Studio default ≥ 1.0× genai (the default is genai's path for the small model, native for the ~100M one: see the
note under each table); native ≥ 2× transformers; serve at 4 clients ≥ 2.5× one client.

    python benchmarks/bench_chat.py [--tokens 128] [--quick | --big]
        --quick: the tiny model and 1 thread only; --big: only a Llama-3.2-1B shape, native vs transformers

Figures that set constants (2 cores unless said; the serve and Chat page figures at --tokens 256):
- ONE_ROW_COPY_MAX_PARAMS (slm_core/models/decoding.py): ~100M model, one-row steps from an (in, out) fp32
  copy through MKL against oneDNN's packed matrices: 35 vs 28 tokens/s on 1 thread; on 2 threads oneDNN is
  ahead, 43 vs 36.
- ONE_ROW_HALF_MIN_PARAMS (slm_core/models/decoding.py): ~100M model, 2 threads, exact fp32 against the bf16
  copy: 42-46 vs 92-99 tokens/s on an Intel AVX2 CPU. On an AMD AVX2 CPU (no bf16 arithmetic), exact / bf16 /
  fp16: 19-20 / 25 / 26-31 on 2 threads, 20-24 / 17-18 / 22-24 on 1. --big (Llama-3.2-1B shape, 2 threads,
  the bf16 copy alone past FAST_MAX_PARAMS): 3.2-3.6 -> 10.9-11.6 tokens/s.
- ONEDNN_MIN_DIM (slm_core/models/decoding.py): on the tiny model's 256-wide matrices oneDNN's per-call cost
  made a 4-row step 20-40% slower than MKL's (measured in place; isolated micro-benchmarks flatter oneDNN).
- ONE_THREAD_MAX_PARAMS (slm_core/infer/engine.py): a 256-wide multiply takes ~20 µs; a 3M model gains
  nothing from a second thread alone (1108 vs 1165 tokens/s), and its decode loop in a thread beside the
  streaming threads ran 560 tokens/s on one thread, 359 on two.
- STREAM_INTERVAL_S (slm_core/infer/serve.py): 3M model, 1, 4 and 8 clients: one event per token 330-361,
  655-695 and 901-979 tokens/s, against 413-497, 817-976 and 1294-1337 at 20 ms.
- PAGE_UPDATE_S (studio/chat_session.py): Chat page, 3M model: native 137-178 tokens/s updated per token,
  310-342 at 20 ms, 420-522 at 50 ms; onnxruntime-genai 182-207, 1107-1216 and 1322-1910.
- The Chat tab's updates without gr.skip() (studio/tabs/chat.py): gr.skip() cost ~3 of an update's ~5 ms
  on the thread that streams.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from slm_core.config import ModelConfig, TokenizerConfig  # noqa: E402
from slm_core.infer.decoder import half_copy_kind  # noqa: E402
from slm_core.infer.engine import Decoder, decode_one  # noqa: E402
from slm_core.infer.sampling import SamplingParams  # noqa: E402
from slm_core.models.decoding import one_row_half_default
from slm_core.models.model import Transformer  # noqa: E402
from slm_core.post.export import export_model  # noqa: E402

TEXT = ("Once upon a time there was a little dog named Tom. Tom liked to run in the park with his friend "
        "Sue, a big red cat. One day they found a shiny ball under a tree, and they played until the sun went "
        "down. 'Thank you,' said Sue, 'this was the best day.' ") * 200
PROMPT = "Once upon a time there was a little dog"


def models(tokenizer) -> dict[str, ModelConfig]:
    v = tokenizer.n_vocab
    return {"quickstart (tiny-llama ~4M)": ModelConfig(family="llama", n_layer=4, n_head=4, n_kv_head=2, d_model=256,
                                                        context_length=512, vocab_size=v),
            "~100M llama": ModelConfig(family="llama", n_layer=16, n_head=12, n_kv_head=4, d_model=768, d_ff=2048,
                                       context_length=512, vocab_size=v)}


def rate(stamps: list[float], start: float) -> tuple[float, float]:
    """(decode tokens/s after the first token, TTFT seconds)."""
    if len(stamps) < 2:
        return 0.0, (stamps[0] - start) if stamps else float("nan")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), stamps[0] - start


def timed(tokens) -> tuple[float, float]:
    start, stamps = time.perf_counter(), []
    for _ in tokens:
        stamps.append(time.perf_counter())
    return rate(stamps, start)


# ---- the rows -----------------------------------------------------------------------------------

def native_row(model, ids, n, one_row_half=None) -> tuple[float, float]:
    decoder = Decoder(model, slots=1, max_len=len(ids) + n, one_row_half=one_row_half)
    list(decode_one(decoder, ids, SamplingParams(8, temperature=0)))  # warm-up
    return timed(decode_one(decoder, ids, SamplingParams(n, temperature=0)))


def chat_row(engine, ids, n) -> tuple[float, float]:
    """A reply's text streamed as the Chat tab streams it, and the tokens/s and TTFT the page shows for it."""
    list(engine.stream(ids, SamplingParams(8, temperature=0), stop_ids=()))
    stats: dict = {}
    list(engine.stream(ids, SamplingParams(n, temperature=0), stats, stop_ids=()))
    return stats["tokens_per_sec"], stats["ttft_s"]


def studio_native_row(hf_dir: Path, ids, n, threads: int) -> tuple[tuple[float, float], str]:
    """The Studio's native chat path, in a process of its own as the Studio is: this one has run torch on its
    main thread, whose OpenMP team would slow a decode loop thread (slm_core.infer.openmp). ((tok/s, TTFT), engine)."""
    out = subprocess.run([sys.executable, __file__, "--studio-native-row", str(hf_dir), str(n), str(threads),
                          json.dumps(ids)], capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return (result["tps"], result["ttft"]), result["engine"]


def _studio_native_child(hf_dir: str, n: int, threads: int, ids: list[int]) -> None:
    from slm_core.infer.openmp import CORES
    from studio.chat_session import SLOTS, _load

    engine, _, _ = _load("native", Path(hf_dir), "best", threads if threads < CORES else None)  # None: its default
    tps, ttft = chat_row(engine, ids, n)
    print(json.dumps({"tps": tps, "ttft": ttft, "engine": f"{engine.description}, {engine.decode_threads} "
                      f"thread(s), {SLOTS} slots"}))
    engine.close()


def studio_page_rows(folders: dict, n: int) -> list[tuple[str, tuple[float, float]]]:
    """The Chat page itself: `python launch.py` (the whole Studio, its default threads), driven through the
    /chat endpoint the Send button calls, by gradio_client in this process as a browser tab would be. Each row
    is the tokens/s and TTFT the page prints under the reply: Gradio's per-update work included."""
    import re
    import shutil

    from gradio_client import Client

    runs = Path(folders["hf"]).parent / "studio-runs"  # the page reads only its runs folder (and allowed ones)
    engines = [("native", "hf")] + [("onnx", name) for name in ("genai", "genai-int4") if name in folders]
    for _, name in engines:
        shutil.copytree(folders[name], runs / name, dirs_exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    studio = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parents[1] / "launch.py"), "--port",
                               str(port), "--runs-dir", str(runs)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        for _ in range(600):
            try:
                page = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # not up yet
                time.sleep(0.5)
        else:
            raise RuntimeError("the Studio did not answer within 5 minutes")
        rows = []
        for engine, name in engines:
            def reply(count):  # message, history, model, checkpoint, temperature .. seed, engine, system prompt
                return page.predict(PROMPT, [], str(runs / name), "best", 0.0, 0, 1.0, 1.0, count, "1", engine, "",
                                    api_name="/chat")[2]
            reply(8)  # loads the model
            shown = reply(n)
            tps = float(re.search(r"\*\*([\d.]+) tokens/s", shown).group(1))
            ttft = float(re.search(r"first token (\d+) ms", shown).group(1)) / 1000
            label = {"hf": "native", "genai": "genai fp32", "genai-int4": "genai int4"}[name]
            rows.append((f"Studio Chat page, {label} (Gradio, its threads)", (tps, ttft)))
        return rows
    finally:
        studio.terminate()
        studio.wait(30)


def genai_own_row(folder, ids, n, threads, text: bool = False) -> tuple[float, float]:
    """onnxruntime-genai's own loop: token ids only (the strict peer), or with `text` each token through genai's
    own TokenizerStream, as its chat example streams a reply."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model) if text else None

    def run(count):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + count, min_length=len(ids) + count, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        stream = tokenizer.create_stream() if text else None
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            yield stream.decode(token) if text else token

    list(run(8))
    return timed(run(n))


def studio_row(folder, ids, n, threads) -> tuple[float, float]:
    """The Studio's default chat path for a model with a genai export: OnnxEngine + our text layer."""
    from slm_core.infer.onnx import OnnxEngine

    return chat_row(OnnxEngine(folder, threads=threads), ids, n)


def hf_row(hf_dir, ids, n, dtype) -> tuple[float, float]:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    elif dtype == "int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    elif dtype == "int4":
        return float("nan"), float("nan")  # transformers has no CPU int4 path without extra packages
    x = torch.tensor([ids])
    stamps: list[float] = []

    class Clock(transformers.generation.streamers.BaseStreamer):
        def put(self, value):
            stamps.append(time.perf_counter())

        def end(self):
            pass

    with torch.inference_mode():
        model.generate(x, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        start = time.perf_counter()
        model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=Clock())
    return rate(stamps[1:], start)  # the streamer's first put is the prompt


# ---- serve --------------------------------------------------------------------------------------

def serve_rows(hf_dir: Path, n: int, threads: Optional[int] = None, clients=(1, 4, 8)) -> list[tuple]:
    """(clients, aggregate tok/s, p50 TTFT, p95 TTFT) of `slm serve` on a model folder (HF or genai), with its
    default threads unless `threads` is given."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "slm_core", "serve", str(hf_dir), "--port", str(port),
                               "--name", "bench", "--slots", "8"] + (["--threads", str(threads)] if threads else []),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/models", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        stream_client(base, 8)  # warm-up
        rows = []
        for count in clients:
            results: list = [None] * count
            threads_ = [threading.Thread(target=lambda i=i: results.__setitem__(i, stream_client(base, n)))
                        for i in range(count)]
            start = time.perf_counter()
            for t in threads_:
                t.start()
            for t in threads_:
                t.join()
            wall = time.perf_counter() - start
            ttfts = sorted(r[0] for r in results)
            total = sum(r[1] for r in results)
            rows.append((count, total / wall, statistics.median(ttfts), ttfts[min(len(ttfts) - 1,
                                                                                 int(0.95 * len(ttfts)))]))
        return rows
    finally:
        server.terminate()
        server.wait(30)


def stream_client(base: str, n: int) -> tuple[float, int]:
    """(TTFT seconds, tokens) of one streaming completion read over plain HTTP."""
    body = json.dumps({"model": "bench", "prompt": PROMPT, "max_tokens": n, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    request = urllib.request.Request(base + "/completions", data=body, method="POST")
    start, first, tokens = time.perf_counter(), None, 0
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter()
    return (first or time.perf_counter()) - start, tokens


# ---- main ---------------------------------------------------------------------------------------

def build(config: ModelConfig, tokenizer, work: Path, int4: bool) -> dict:
    from slm_core.infer import onnx as runtime_onnx

    torch.manual_seed(0)
    model = Transformer(config).eval()
    folders = {"model": model, "hf": work / "hf"}
    export_model(model, tokenizer, config, folders["hf"], fmt="hf")
    if runtime_onnx.available():
        folders["genai"] = work / "onnx"
        export_model(model, tokenizer, config, folders["genai"], fmt="onnx")
        if int4:
            folders["genai-int4"] = work / "onnx-int4"
            export_model(model, tokenizer, config, folders["genai-int4"], fmt="onnx", onnx_precision="int4")
    return folders


def quantized(model, method):
    from slm_core.models.quantized import quantize_model

    return quantize_model(copy.deepcopy(model), method, group_size=64)


def bench_model(name, config, tokenizer, n, thread_counts, work) -> None:
    folders = build(config, tokenizer, work, int4=True)
    model, ids = folders["model"], tokenizer.encode(PROMPT)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"\n## {name}: {params:.1f}M parameters, batch 1, {n} new tokens, prompt {len(ids)} tokens")
    print(f"{'path':<48}{'threads':>8}{'tok/s':>10}{'TTFT ms':>10}{'vs peer':>10}")
    notes: set = set()
    variants = {"fp32": model, "bf16": Transformer(config).eval(), "int8": quantized(model, "int8"),
                "int8-dynamic": quantized(model, "int8-dynamic"), "int4": quantized(model, "int4")}
    variants["bf16"].load_state_dict(model.state_dict())
    variants["bf16"] = variants["bf16"].to(torch.bfloat16)
    page_rows = studio_page_rows(folders, n)
    for threads in thread_counts:
        torch.set_num_threads(threads)
        rows = []
        if "genai" in folders:
            peer = genai_own_row(folders["genai"], ids, n, threads)
            rows.append(("onnxruntime-genai fp32, its own loop (peer)", peer, None))
            with_text = genai_own_row(folders["genai"], ids, n, threads, text=True)
            rows.append(("onnxruntime-genai fp32, its loop + its text stream", with_text, peer[0]))
            rows.append(("Studio genai chat path (genai + text layer)", studio_row(folders["genai"], ids, n, threads),
                         peer[0]))
            if "genai-int4" in folders:
                rows.append(("onnxruntime-genai int4 (Studio path)", studio_row(folders["genai-int4"], ids, n, threads),
                             peer[0]))
        if threads == thread_counts[-1]:  # the page runs at the Studio's own threads: once, beside the most threads
            rows += [(label, page, rows[0][1][0] if rows else None) for label, page in page_rows]
        studio, description = studio_native_row(folders["hf"], ids, n, threads)
        rows.append(("Studio native chat path (auto)", studio, rows[0][1][0] if rows else None))
        notes.add(f"Studio native chat path, up to {threads} thread(s): {description}")
        peers: dict = {}
        for dtype, variant in variants.items():
            peer_dtype = "int8" if dtype == "int8-dynamic" else dtype  # transformers' int8 is dynamic int8
            hf = peers[peer_dtype] = peers.get(peer_dtype) or hf_row(folders["hf"], ids, n, peer_dtype)
            rows.append((f"transformers generate {peer_dtype} (peer)", hf, None))
            if dtype == "fp32":  # auto: fp32, reading a half-precision copy in one-row steps from 40M parameters
                half = one_row_half_default(params * 1e6, torch.float32, "cpu")
                label = f"fp32 + {half_copy_kind()} one-row" if half else "fp32"
                rows.append((f"native decode auto = {label} (slm generate)", native_row(variant, ids, n), hf[0]))
                dtype, extra = "fp32 exact", dict(one_row_half=False)
            else:
                extra = {}
            rows.append((f"native decode {dtype} (slm generate)", native_row(variant, ids, n, **extra), hf[0]))
        for label, result, peer in rows:
            print_row(label, threads, result, peer)
    from studio.chat_session import _native_outpaces_fp32_genai

    default = "native" if _native_outpaces_fp32_genai(folders["hf"]) or "genai" not in folders else "genai"
    notes.add(f"The Studio's default (auto) chat path for this model, with an fp32 genai export: {default}")
    for note in sorted(notes):
        print(note)
    engines = [("native", folders["hf"])] + ([("onnx (genai's batching engine)", folders["genai"])]
                                              if "genai" in folders else [])
    for engine, folder in engines:
        print(f"\nslm serve ({name}, {engine}), streaming clients, {n} tokens each, its default threads ("
              f"{os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f}:")
        print(f"{'clients':>8}{'aggregate tok/s':>18}{'vs 1 client':>13}{'p50 TTFT ms':>13}{'p95 TTFT ms':>13}")
        rows = serve_rows(folder, n)
        for count, agg, p50, p95 in rows:
            print(f"{count:>8}{agg:>18.0f}{agg / rows[0][1]:>12.2f}x{p50 * 1000:>13.0f}{p95 * 1000:>13.0f}", flush=True)


def print_row(label: str, threads: int, result: tuple[float, float], peer: Optional[float],
              tps_digits: int = 0) -> None:
    """One table row: tokens/s, TTFT and the ratio to `peer`'s tokens/s (none where the peer has no figure)."""
    tps, ttft = result
    ratio = f"{tps / peer:.2f}x" if peer and peer == peer and peer > 0 else ""
    print(f"{label:<48}{threads:>8}{tps:>10.{tps_digits}f}{ttft * 1000:>10.1f}{ratio:>10}", flush=True)


def bench_big(tokenizer, n: int, work: Path) -> None:
    """A Llama-3.2-1B-shaped model with its real vocabulary size: past FAST_MAX_PARAMS, where the decoder makes
    no fused fp32 copies and its one-row steps read the bf16 copy alone. Native against transformers, fp32."""
    config = ModelConfig(family="llama", n_layer=16, n_head=32, n_kv_head=8, d_model=2048, d_ff=8192,
                         context_length=2048, vocab_size=128256, rope_theta=500000.0)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    export_model(model, tokenizer, config, work / "hf", fmt="hf")
    ids, threads = tokenizer.encode(PROMPT), os.cpu_count()
    torch.set_num_threads(threads)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"\n## Llama-3.2-1B shape: {params:.2f}B parameters, batch 1, {n} new tokens, prompt {len(ids)} tokens")
    print(f"{'path':<48}{'threads':>8}{'tok/s':>10}{'TTFT ms':>10}{'vs peer':>10}")
    peer = hf_row(work / "hf", ids, n, "fp32")
    rows = [("transformers generate fp32 (peer)", peer, None),
            ("native decode auto = fp32 + bf16 one-row", native_row(model, ids, n), peer[0]),
            ("native decode fp32 exact", native_row(model, ids, n, one_row_half=False), peer[0])]
    for label, result, versus in rows:
        print_row(label, threads, result, versus, tps_digits=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="the quickstart model and 1 thread only")
    parser.add_argument("--big", action="store_true",
                        help="only a Llama-3.2-1B-shaped model: native against transformers (~13 GB of RAM)")
    parser.add_argument("--studio-native-row", nargs=4, help=argparse.SUPPRESS)  # HF N THREADS IDS: the child
    args = parser.parse_args()
    if args.studio_native_row:
        hf_dir, n, threads, ids = args.studio_native_row
        return _studio_native_child(hf_dir, int(n), int(threads), json.loads(ids))
    from slm_core.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=2048), [TEXT], progress=False)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared machine: figures are "
          "upper bounds of the noise, compare rows of one run only)")
    if args.big:
        with tempfile.TemporaryDirectory() as work:
            return bench_big(tokenizer, min(args.tokens, 32), Path(work))
    for i, (name, config) in enumerate(models(tokenizer).items()):
        if args.quick and i:
            break
        with tempfile.TemporaryDirectory() as work:
            bench_model(name, config, tokenizer, args.tokens, (1,) if args.quick else (1, 2), Path(work))


if __name__ == "__main__":
    main()
