"""`slm export`: a model as a Hugging Face folder, GGUF or ONNX."""

from __future__ import annotations

from pathlib import Path

from slm_core.cli.flags import add_runs_dir
from slm_core.infer.engine_choice import checkpoint_written, model_folder
from slm_core.models.load import load_model
from slm_core.models.quantized import artifact_dir
from slm_core.post.export import FORMATS, export_model
from slm_core.post.gguf_quant import GGUF_TYPES
from slm_core.run.runs import check_runs_dir


def add_export_parser(sub) -> None:
    parser = sub.add_parser("export", help="export a model as a Hugging Face folder, GGUF (llama.cpp / Ollama) or ONNX")
    parser.add_argument("model", help="run name, checkpoint, quantized or Hugging Face folder")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="gguf")
    parser.add_argument("--gguf-type", default="f16", choices=GGUF_TYPES, metavar="LEVEL",
                        help=f"GGUF level: {', '.join(GGUF_TYPES)} (q6_k/q5_k_m/q4_k_m need llama.cpp's "
                             "llama-quantize on PATH or llama-cpp-python)")
    parser.add_argument("--onnx-precision", default="fp32", choices=["fp32", "int8", "int4", "fp16"],
                        help="weights of the onnxruntime-genai folder (--format onnx); fp16 needs --onnx-device cuda")
    parser.add_argument("--onnx-device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=None, help="output folder (default: <run>/export/<format>)")
    parser.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_runs_dir(parser)


def cmd_export(args) -> int:
    runs_dir = check_runs_dir(args.runs_dir)
    folder = model_folder(args.model, runs_dir)
    # taken before the load: a checkpoint written meanwhile makes this export look older, never newer, than it is
    written = checkpoint_written(folder, args.checkpoint) if folder is not None else None
    loaded = load_model(args.model, tag=args.checkpoint, runs_dir=runs_dir)
    label = args.fmt + (f"-{args.gguf_type}" if args.fmt.startswith("gguf") else "")
    label += f"-{args.onnx_precision}" if args.fmt == "onnx" and args.onnx_precision != "fp32" else ""
    out = Path(args.out) if args.out else artifact_dir(loaded.path, "export", label)
    for path in export_model(loaded.model, loaded.tokenizer, loaded.config, out, args.fmt, args.gguf_type,
                             source=str(args.model), overwrite=args.overwrite,
                             onnx_precision=args.onnx_precision, onnx_device=args.onnx_device, runs_dir=runs_dir,
                             checkpoint_written=written or None):
        print(path)
    return 0
