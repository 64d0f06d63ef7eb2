"""`slm serve`: the OpenAI-compatible server, or a hand-over to vLLM."""

from __future__ import annotations

import os

from slm_core.cli.flags import add_runs_dir
from slm_core.errors import SLMError
from slm_core.infer.guard import is_loopback
from slm_core.infer.serve import (
    DEFAULT_PORT,
    STREAM_INTERVAL_S,
    load_served,
    run_server,
)
from slm_core.models.load import load_model
from slm_core.models.quantized import artifact_dir
from slm_core.post.export import export_model
from slm_core.run.runs import check_runs_dir


def add_serve_parser(sub) -> None:
    parser = sub.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="OpenAI-compatible: /v1/completions (prompts as text, token ids or lists of either; echo; "
                    "logprobs), /v1/chat/completions (logprobs, top_logprobs), n choices, streaming, /v1/models; "
                    "/health and Prometheus /metrics (no key needed); vLLM's /tokenize, /detokenize and "
                    "/tokenizer_info (lm-evaluation-harness's local-completions uses them). A parameter it does "
                    "not honour is a 400 naming it.")
    parser.add_argument("model", help="run name, checkpoint, quantized, Hugging Face or ONNX (genai) folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request "
                                                        "(or set SLM_SERVE_API_KEY: unlike a flag, not shown in ps)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a Host name requests may carry besides loopback and --host (a proxy's; repeatable)")
    parser.add_argument("--insecure", action="store_true",
                        help="serve beyond loopback without --api-key (only on a network that is yours alone)")
    parser.add_argument("--engine", default="auto", choices=["auto", "native", "onnx", "vllm"],
                        help="auto: the faster here of native torch and the model's onnxruntime-genai export (`slm "
                             "export --format onnx`), timed once and cached (slm_core.infer.engine_choice); native "
                             "torch (continuous batching); onnxruntime-genai; or hand over to vLLM")
    parser.add_argument("--name", default=None, help="model id clients ask for (default: the model's name)")
    parser.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    parser.add_argument("--slots", type=int, default=8, help="sequences decoded together at most")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                        help="as for `slm generate`: auto (fastest where exact enough), fp32 (exact) or bf16")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for decoding")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow start)")
    parser.add_argument("--stream-interval-ms", type=float, default=STREAM_INTERVAL_S * 1000,
                        help="a stream sends at most one event per this many ms, with every token decoded meanwhile "
                             "(default %(default)g; 0: an event per token, slower with many clients)")
    parser.add_argument("--draft", default=None, metavar="MODEL",
                        help="speculative decoding while one request decodes alone: a smaller model with the same "
                             "tokenizer (auto: a run made from MODEL by `slm shrink`); native engine only")
    add_runs_dir(parser)


def cmd_serve(args) -> int:
    args.runs_dir = check_runs_dir(args.runs_dir)
    if args.api_key is None:  # the Studio's Serve tab passes its key this way
        args.api_key = os.environ.get("SLM_SERVE_API_KEY") or None
    if args.api_key is not None and not args.api_key:
        raise SLMError("--api-key is empty: give a key, or leave the flag out to serve without one")
    if not (is_loopback(args.host) or args.api_key or args.insecure):
        raise SLMError(f"refusing to serve on --host {args.host} without --api-key: anyone who reaches this "
                       "address could use the model. Add --api-key KEY, or --insecure if this network is yours alone")
    if args.stream_interval_ms < 0:
        raise SLMError("--stream-interval-ms must be 0 (an event per token) or more")
    if args.engine == "vllm":
        return _hand_to_vllm(args)
    served = load_served(args.model, args.engine, args.checkpoint, args.slots, args.dtype, args.threads,
                         args.compile, args.name, args.runs_dir, draft=args.draft, build=True)
    served.api_key = args.api_key
    served.stream_interval_s = args.stream_interval_ms / 1000
    return run_server(served, args.host, args.port, args.allow_host)


def _hand_to_vllm(args) -> int:
    """vLLM's own OpenAI server on an HF export of MODEL (exported first when MODEL is not one)."""
    import importlib.util
    import os
    import sys
    from pathlib import Path

    if importlib.util.find_spec("vllm") is None:
        raise SLMError("--engine vllm needs vLLM (a CUDA machine: `pip install vllm`); "
                       "without it, serve with the default --engine native")
    folder = Path(args.model)
    if not (folder / "config.json").exists():
        loaded = load_model(args.model, tag=args.checkpoint, runs_dir=args.runs_dir)
        folder = artifact_dir(loaded.path, "export", "hf")
        if not (folder / "config.json").exists():
            export_model(loaded.model, loaded.tokenizer, loaded.config, folder, "hf", source=str(args.model))
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
               "--served-model-name", args.name or Path(str(args.model)).name, "--host", args.host,
               "--port", str(args.port)] + (["--api-key", args.api_key] if args.api_key else [])
    print("handing over to vLLM:", " ".join(command), flush=True)
    os.execv(sys.executable, command)
    return 0
