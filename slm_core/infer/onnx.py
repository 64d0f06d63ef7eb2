"""onnxruntime-genai, optional: `build_genai_folder` makes its runtime-ready folder from our model, and
`OnnxEngine` chats from that folder with the native engine's interface."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional

from slm_core.errors import SLMError
from slm_core.infer import genai_batch
from slm_core.infer.engine import stream_request
from slm_core.infer.requests import RequestHandle
from slm_core.infer.sampling import SamplingParams
from slm_core.models.hf import save_hf_folder
from slm_core.models.tokenizer import Tokenizer

PRECISIONS = ("fp32", "int4", "int8", "fp16")
CONFIG = "genai_config.json"
SUPPORTED_FAMILIES = ("llama",)  # the builder knows Llama/Qwen-style graphs; not GPT-2's


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime_genai") is not None


def require() -> None:
    if not available():
        raise SLMError("onnxruntime-genai is not installed: `pip install onnxruntime-genai` (or "
                       "`pip install 'slm-studio[onnx]'`; onnxruntime-genai-cuda on a GPU); the native torch "
                       "engine works without it")


def is_genai_folder(path) -> bool:
    return (Path(path) / CONFIG).exists()


def can_build(config) -> bool:
    """Whether onnxruntime-genai's builder has a graph for a model of this ModelConfig."""
    return config.family in SUPPORTED_FAMILIES and config.position == "rope"


def build_genai_folder(model, tokenizer, folder: Path, precision: str = "fp32", device: str = "cpu",
                       template: Optional[str] = None) -> list[Path]:
    """Run onnxruntime-genai's builder on an HF export of `model` into `folder`; the files written."""
    require()
    if precision not in PRECISIONS:
        raise SLMError(f"ONNX precision {precision!r} is unknown: use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device == "cpu":
        raise SLMError("fp16 ONNX needs --onnx-device cuda; on CPU use fp32, int8 or int4")
    if not can_build(model.config):
        raise SLMError(f"onnxruntime-genai's builder has no graph for {model.config.family}-family models: "
                       "export --format onnx-graph (a plain logits graph) or chat with the native engine")
    if tokenizer is None:
        raise SLMError("this model has no tokenizer to export; onnxruntime-genai needs one")

    work = Path(tempfile.mkdtemp(prefix="slm-genai-"))
    try:
        save_hf_folder(model, tokenizer, work / "hf", template=template)
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(work / "hf"),
                   "-o", str(folder), "-p", precision, "-e", device, "-c", str(work / "cache")]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not (folder / CONFIG).exists():
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise SLMError(f"onnxruntime-genai's builder failed ({' | '.join(tail)}); the command was: "
                           + " ".join(command))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (folder / "slm_studio.json").write_text(json.dumps({"template": template, "eot_id": tokenizer.eot_id}))
    return sorted(p for p in folder.iterdir() if p.is_file())


class OnnxEngine:
    """An onnxruntime-genai model folder behind the Engine interface (see module docstring)."""

    backend = "onnxruntime-genai"

    def __init__(self, folder, threads: Optional[int] = None, slots: int = 4, inline_alone: bool = True):
        """`slots`: requests genai's engine decodes together at most. `inline_alone`: a request alone runs in
        its caller's thread (the Studio: usually one chat); False batches every request that can (a server,
        where requests overlap: a lone Generator beside a batch shares the same session's threads with it,
        and both slowed to about one stream's speed)."""
        require()
        import onnxruntime_genai as og

        self.folder = Path(folder)
        if not is_genai_folder(self.folder):
            raise SLMError(f"{self.folder} is not an onnxruntime-genai folder (no {CONFIG}): "
                           "make one with `slm export MODEL --format onnx`")
        self.og = og
        config = og.Config(str(self.folder))
        overlay: dict = {"engine": {"static_batching": {"max_batch_size": max(1, int(slots))}}}
        if threads:  # genai's CPU thread pool, so chat beside a training run stays small
            overlay["model"] = {"decoder": {"session_options": {"intra_op_num_threads": int(threads),
                                                                "inter_op_num_threads": 1}}}
        config.overlay(json.dumps(overlay))
        self.model = og.Model(config)
        meta = _read_json(self.folder / "slm_studio.json")
        genai = _read_json(self.folder / CONFIG)["model"]
        self.template = meta.get("template")
        self.context_length = int(genai["context_length"])
        self.vocab_size = int(genai.get("vocab_size", 0)) or 1 << 20
        self.eos = genai["eos_token_id"] if isinstance(genai["eos_token_id"], list) else [genai["eos_token_id"]]
        self.tokenizer = _GenaiTokenizer(self.folder, meta.get("eot_id", self.eos[0]))
        self.threads = threads
        self.inline_alone = inline_alone
        self.alone = 0  # requests on their own Generator not yet finished
        self.closed = False
        self._lock = threading.Lock()

        # genai's own continuous-batching engine where this version has one (0.18+); else a Generator each
        self.batcher = genai_batch.GenaiBatcher(og, self.model, self.context_length, self.generator) \
            if genai_batch.supported(og) else None

    @property
    def description(self) -> str:
        return f"onnxruntime-genai ({precision_of(self.folder)}{', batched' if self.batcher else ''})"

    def in_use(self) -> bool:
        """Whether requests are decoding (on Generators of their own or in the batcher) or waiting."""
        batcher = self.batcher
        return self.alone > 0 or (batcher is not None and (bool(batcher.live) or not batcher.waiting.empty()))

    def close(self) -> None:
        self.closed = True
        if self.batcher is not None:
            self.batcher.close()

    def submit(self, prompt_ids: list[int], params: SamplingParams, stop_ids=None):
        """A request to iterate for token ids; `stop_ids` (besides end of text) end it unshown."""
        if not prompt_ids:
            raise SLMError("the prompt is empty after tokenization; type something to continue from")
        with self._lock:  # decide and count in one step: requests arriving together see each other
            batcher = self.batcher
            overlapping = not self.inline_alone or self.alone > 0 or (batcher is not None
                                                                      and batcher.batch_opened is not None)
            joins = batcher is not None and overlapping and batcher.can_join(params)
            if not joins:
                self.alone += 1
        if joins:
            stops = set(self.eos) | {self.tokenizer.eot_id} | set(stop_ids or ())
            return batcher.submit(list(prompt_ids), params, stops)
        return GenaiRequest(self, list(prompt_ids), params, stop_ids)

    def _end_alone(self, request: "GenaiRequest") -> None:
        with self._lock:
            if request.in_flight:
                request.in_flight = False
                self.alone -= 1

    def stream(self, prompt_ids: list[int], params: SamplingParams, stats: Optional[dict] = None,
               stop_ids=None, interval_s: float = 0.0) -> Iterator[str]:
        yield from stream_request(self.submit(prompt_ids, params, stop_ids), self.tokenizer, params, stats,
                                  interval_s)

    def generator(self, prompt_ids: list[int], params: SamplingParams):
        """A genai Generator for one request, its prompt appended."""
        generator_params = self.og.GeneratorParams(self.model)
        generator_params.set_search_options(**self.search_options(params, len(prompt_ids)))
        generator = self.og.Generator(self.model, generator_params)
        generator.append_tokens(prompt_ids)
        return generator

    def search_options(self, params: SamplingParams, prompt_len: int) -> dict:
        options = {"max_length": min(self.context_length, prompt_len + params.max_new_tokens),
                   "do_sample": not params.greedy}
        if params.repetition_penalty != 1.0:  # set at all, genai applies it at every step (~4% of a 4M model's)
            options["repetition_penalty"] = params.repetition_penalty
        if not params.greedy:
            options.update(temperature=params.temperature, top_p=params.top_p,
                           top_k=params.top_k if params.top_k > 0 else self.vocab_size)  # ours: 0 = off
        if params.seed is not None:
            options["random_seed"] = params.seed
        return options


class GenaiRequest(RequestHandle):
    """One genai Generator, iterated lazily in the caller's thread. In flight (so that requests overlapping it
    batch) from creation until its iteration ends or it is cancelled."""

    def __init__(self, engine: OnnxEngine, prompt_ids: list[int], params: SamplingParams, stop_ids=None):
        super().__init__()
        self.engine, self.prompt_ids, self.params = engine, prompt_ids, params
        self.stop_ids = frozenset(stop_ids or ())
        self.generated = 0
        self.in_flight = True  # counted in engine.alone by OnnxEngine.submit

    def cancel(self) -> None:
        super().cancel()
        self.engine._end_alone(self)

    def __iter__(self) -> Iterator[int]:
        try:
            yield from self._tokens()
        finally:
            self.engine._end_alone(self)

    def _tokens(self) -> Iterator[int]:
        engine = self.engine
        if self.params.max_new_tokens <= 0:
            self.finish_reason = "length"
            return
        stops = frozenset(engine.eos) | {engine.tokenizer.eot_id} | self.stop_ids
        yield from genai_batch.generator_tokens(engine.generator(self.prompt_ids, self.params), self, stops)


class _GenaiTokenizer:
    """The exported tokenizer.json through our Tokenizer (same ids and bytes as the native path)."""

    def __init__(self, folder: Path, eot_id: int):
        self._tok = Tokenizer.from_hf(folder)
        self.eot_id = eot_id
        self.chat_template = getattr(self._tok, "chat_template", None)  # a Hub model's own, if it has one

    def apply_chat_template(self, messages, **kwargs):
        return self._tok.apply_chat_template(messages, **kwargs)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text)

    def decode_bytes(self, ids) -> bytes:
        return self._tok.decode_bytes(ids)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def precision_of(folder: Path) -> str:
    """The precision `slm export` built a genai folder in (fp32, int4, …), or 'onnx' when it did not say."""
    info = _read_json(folder / "export.json")
    return info.get("onnx_precision") or "onnx"
