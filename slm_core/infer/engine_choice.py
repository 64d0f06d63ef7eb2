"""One engine choice for `slm generate`, `slm serve`, Chat and Compare: "auto" times native torch against each
onnxruntime-genai export of the model with a short greedy decode the first time the model is loaded, keeps the
faster, and caches the answer per model (and checkpoint), dtype and thread count in <runs>/engine_choices.json.
`--engine native|onnx` overrides it everywhere; every path says which engine it used and why (`Choice.line`).

Which engine and thread count win also depends on what else the machine runs (two threads decode a 100M model
fastest on two idle cores, and at a tenth of one thread's speed while a training run holds them), so the cache keeps
one answer per load: "quiet", or "busy" while other processes use 40% of the cores or more
(slm_core.system.cores_used_by_others). A path that asks again after the load changed gets the answer measured
under the new load (measuring it the first time); `slm serve` asks again as the load changes (serve.py).

A run with no export yet, where onnxruntime-genai is installed and its builder knows the model: auto decodes on
native torch (timing its thread counts where there are several) and, where the caller asks (`build`), has the export
built in the background (slm_core.infer.genai_build); once it exists, the next choice times both and keeps the
faster. `slm serve` then switches engines in place, Chat at its next message, `slm generate` at its next run.

Measured, not assumed: which runtime wins depends on the CPU and the model's size (a 100M model on 2 cores: native
ahead on an Intel CPU, genai ahead on an AMD one; studio.chat_session's old rule guessed from bf16 support)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from slm_core.errors import SLMError
from slm_core.fsio import atomic_write_json, read_state
from slm_core.infer import genai_build, onnx
from slm_core.infer.decoder import Decoder
from slm_core.infer.engine import ONE_THREAD_MAX_PARAMS, decode_one, pick_dtype
from slm_core.infer.openmp import CORES, in_fresh_thread
from slm_core.infer.sampling import SamplingParams
from slm_core.models.estimate import count_parameters
from slm_core.models.load import load_model
from slm_core.models.memory import model_config
from slm_core.models.quantized import is_quantized
from slm_core.run.runs import read_json
from slm_core.system import cores_used_by_others

ENGINES = ("auto", "native", "onnx")
CACHE_FILE = "engine_choices.json"
PROBE_TOKENS = 48  # timed greedy steps per engine (after a few untimed ones): ~0.1 s at 4M, ~2 s at 100M on 2 cores
WARMUP_TOKENS = 4
ROUNDS = 2
PROBE_VERSION = 5  # part of the cache key: a change to the probe measures again
LABELS = {"native": "native torch", "onnx": "onnxruntime-genai"}
BUSY_SHARE = 0.4  # of the cores, used by other processes: a machine this loaded is "busy"
_LOCK = threading.Lock()  # one measurement at a time in a process (two would slow each other)


@dataclass
class Choice:
    engine: str  # "native" | "onnx"
    folder: Any  # what to load: the model as given, or the genai folder
    reason: str
    speeds: dict = field(default_factory=dict)  # label → tokens/s, when measured
    cached: bool = False
    threads: Optional[int] = None  # the thread count that measured fastest (None: the engine's default)
    load: str = ""  # "quiet" | "busy": the machine's load this choice was measured (or looked up) for
    loaded: Any = None  # the native LoadedModel the measurement loaded (reuse it rather than load twice)
    export: str = ""  # a run without a genai export: "buildable" | "building" | "failed: …" ("" otherwise)
    build: Optional[tuple] = None  # (run folder, tag, checkpoint) of that export: start_build's arguments

    def line(self) -> str:
        """'engine: onnxruntime-genai (measured here: …)': what every path prints or shows."""
        return f"engine: {LABELS[self.engine]} ({self.reason})"


LOAD_ENV = "SLM_ENGINE_LOAD"  # "quiet" | "busy": pin the load the choice is made for (reproducible benchmarks, tests)


def load_class() -> str:
    """"busy" while other processes use BUSY_SHARE of the cores or more, else "quiet" (a part of the cache key)."""
    pinned = os.environ.get(LOAD_ENV, "")
    if pinned in ("quiet", "busy"):
        return pinned
    return "busy" if cores_used_by_others() >= BUSY_SHARE * CORES else "quiet"


def model_folder(model, runs_dir: Optional[Path] = None) -> Optional[Path]:
    """The folder `model` names (a folder, or a run in the runs folder); None for a Hub id or a GGUF file."""
    path = Path(str(model)).expanduser()
    if path.is_dir():
        return path
    if runs_dir is not None and len(path.parts) == 1 and (Path(runs_dir) / path).is_dir():
        return Path(runs_dir) / path
    return None


def checkpoint_identity(folder: Path, tag: str = "best") -> str:
    """Changes whenever the weights `tag` loads change: the checkpoint's state.json, else the folder's files."""
    for name in (tag, "latest", "best"):
        state = folder / "checkpoints" / name / "state.json"
        if state.exists():
            stat = state.stat()
            return f"{name}:{stat.st_mtime_ns}:{stat.st_size}"
    stamps = [(p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.iterdir()) if p.is_file()]
    return json.dumps(stamps)


def checkpoint_written(folder: Path, tag: str = "best") -> int:
    """When the checkpoint `tag` resolves to was written (its state.json's mtime in ns; 0 without one)."""
    state = next((folder / "checkpoints" / n / "state.json" for n in (tag, "latest", "best")
                  if (folder / "checkpoints" / n / "state.json").exists()), None)
    return state.stat().st_mtime_ns if state is not None else 0


def genai_exports(folder: Path, tag: str = "best") -> list[Path]:
    """onnxruntime-genai exports of this checkpoint (<run>/export/onnx*, of weights written no earlier), fp32
    first. An export says which checkpoint it loaded (export.json's checkpoint_written, taken before the load): one
    that finished after a newer checkpoint appeared still holds the older weights. Without that, its own age."""
    exports = sorted((folder / "export").glob("onnx*")) if (folder / "export").is_dir() else []
    stamp = checkpoint_written(folder, tag)

    def weights_written(export: Path) -> int:
        info = read_json(export / "export.json", default=None)
        recorded = info.get("checkpoint_written") if isinstance(info, dict) else None
        return recorded if isinstance(recorded, int) else (export / onnx.CONFIG).stat().st_mtime_ns

    return [e for e in exports if onnx.is_genai_folder(e) and weights_written(e) >= stamp]


def choose(model, tag: str = "best", engine: str = "auto", dtype: str = "auto", threads: Optional[int] = None,
           runs_dir: Optional[Path] = None, draft: bool = False, measure: bool = True, build: bool = False) -> Choice:
    """Which engine decodes `model` (see the module docstring). `draft`: speculative decoding wanted (native
    only). `measure` False: a cached answer or native, never a timing (a caller that cannot wait). `build`: a run
    without a genai export gets one built in the background (off for library callers and tests: no surprise
    processes; `slm serve` and Chat turn it on, `slm generate` starts it after its reply: start_build)."""
    if engine not in ENGINES:
        raise SLMError(f"engine {engine!r} is unknown: use auto, native or onnx")
    folder = model_folder(model, runs_dir)
    if folder is not None and onnx.is_genai_folder(folder):
        if draft:
            raise SLMError("a draft model runs on the native engine, and this is an onnxruntime-genai folder: "
                           "leave out the draft, or pick the run it was exported from")
        return Choice("onnx", folder, "an onnxruntime-genai folder runs only there")
    if engine == "native":
        return Choice("native", model, "asked for")
    if draft:
        if engine == "onnx":
            raise SLMError("a draft model runs on the native engine: pick --engine native (or auto), or no draft")
        return Choice("native", model, "a draft model decodes on native torch only")
    exports = genai_exports(folder, tag) if folder is not None else []
    if engine == "onnx":
        onnx.require()
        if not exports:
            raise SLMError(f"{model} has no onnxruntime-genai export newer than its checkpoint: `slm export {model} "
                           "--format onnx` makes one, or pick --engine native")
        return Choice("onnx", exports[0], "asked for")
    if not onnx.available():
        return Choice("native", model, "onnxruntime-genai is not installed")
    if not exports:
        return _without_export(model, folder, tag, dtype, threads, runs_dir, measure, build)
    return _measured(model, folder, tag, dtype, threads, runs_dir, exports, measure)


def _measured(model, folder: Path, tag: str, dtype: str, threads: Optional[int], runs_dir,
              exports: list[Path], measure: bool) -> Optional[Choice]:
    """The fastest of native torch and `exports`, timed once and cached; None when `measure` is False and
    nothing is cached."""
    runs = Path(runs_dir) if runs_dir is not None else folder.parent
    load = load_class()
    key = json.dumps([str(folder.resolve()), tag, checkpoint_identity(folder, tag),
                      [[str(e.resolve()), (e / onnx.CONFIG).stat().st_mtime_ns] for e in exports], dtype,
                      threads or f"default/{CORES}", load, PROBE_VERSION])
    with _LOCK:
        known = _read_cache(runs).get(key)
        if known is not None:
            return _decided(model, exports, known["speeds"], cached=True, measured_at=known.get("measured_at"),
                            load=load)
        if not measure:
            if not exports:
                return None
            return Choice("native", model, "not measured yet: native until the first full load measures both")
        speeds, loaded = _measure(model, tag, dtype, threads, runs_dir, exports)
        cache = _read_cache(runs)
        cache[key] = {"speeds": speeds, "measured_at": time.time(), "model": str(folder), "dtype": dtype,
                      "threads": threads, "load": load}
        _write_cache(runs, cache)
    choice = _decided(model, exports, speeds, load=load)
    choice.loaded = loaded if choice.engine == "native" else None
    return choice


def _without_export(model, folder: Optional[Path], tag: str, dtype: str, threads: Optional[int], runs_dir,
                    measure: bool, build: bool) -> Choice:
    """Native torch, the reason, and the export's state: built in the background (`build`), being built, failed,
    or not buildable (a Hub model, a GGUF file, a family genai's builder lacks). Native's thread counts are timed
    where a model is big enough for several."""
    export, target = "", None
    why = "`slm export MODEL --format onnx` makes one, and auto then measures both"
    if folder is not None and (folder / "checkpoints").is_dir() and tag in genai_build.TAGS and _buildable(folder):
        if not genai_build.enabled():
            why += f" ({genai_build.ENV}=0: none is built in the background)"
        else:
            target = (folder, tag, checkpoint_identity(folder, tag))
            state = genai_build.status(folder, target[2])
            if build and state in ("none", "done"):
                state = genai_build.start(*target)
            log = genai_build.log_path(folder)
            if state == "building":
                export, why = state, f"building one in the background (log: {log}); auto measures both once it is ready"
            elif state.startswith("failed"):
                export, why = state, f"its background build {state} (log: {log})"
            else:
                export = "buildable"
    reason = f"no onnxruntime-genai export of this checkpoint yet: {why}"
    choice = _measured(model, folder, tag, dtype, threads, runs_dir, [], measure) \
        if folder is not None and threads is None and _several_thread_counts(folder) else None
    if choice is not None:  # native's thread counts timed
        choice.reason = f"{reason}; {choice.reason}"
    else:
        choice = Choice("native", model, reason)
    choice.export, choice.build = export, target
    return choice


def _buildable(folder: Path) -> bool:
    """Whether genai's builder has a graph for this run's model (read from its config: nothing loaded)."""
    try:
        return onnx.can_build(model_config(folder)[0])
    except (SLMError, OSError, ValueError):
        return False


def _several_thread_counts(folder: Path) -> bool:
    """Whether native torch would be timed on more than one thread count (a model past ONE_THREAD_MAX_PARAMS)."""
    if CORES < 2:
        return False
    try:
        return count_parameters(model_config(folder)[0])["total"] > ONE_THREAD_MAX_PARAMS
    except (SLMError, OSError, ValueError):
        return False


def start_build(choice: Choice) -> Optional[str]:
    """Start the background export `choice` found buildable (`slm generate`, after its reply); the line to say."""
    if choice.build is None or choice.export != "buildable":
        return None
    choice.export = genai_build.start(*choice.build)
    log = genai_build.log_path(choice.build[0])
    if choice.export == "building":
        return (f"building an onnxruntime-genai export of this model in the background for next time (log: {log}); "
                "auto then times it against native torch and keeps the faster")
    return f"no onnxruntime-genai export was built in the background ({choice.export}; log: {log})"


def _decided(model, exports: list[Path], speeds: dict, cached: bool = False,
             measured_at: Optional[float] = None, load: str = "") -> Choice:
    best = max(speeds, key=speeds.get)
    threads = re.search(r", (\d+) threads?$", best)
    count = int(threads.group(1)) if threads else None
    figures = "; ".join(f"{label}: {rate:,.0f}" for label, rate in sorted(speeds.items(), key=lambda kv: -kv[1]))
    when = f" on {time.strftime('%Y-%m-%d', time.localtime(measured_at))}" if measured_at else ""
    machine = f" on a {load} machine" if load else ""
    reason = f"auto: the fastest here, measured{when}{machine} in tokens/s: {figures}" + (" (cached)" if cached else "")
    if best.startswith("native torch"):
        return Choice("native", model, reason, speeds, cached, count, load)
    runtime = best[: threads.start()] if threads else best
    folder = next(e for e in exports if _export_label(e) == runtime)
    return Choice("onnx", folder, reason, speeds, cached, count, load)


def _export_label(folder: Path) -> str:
    return f"onnxruntime-genai {onnx.precision_of(folder)}"


def _with_threads(label: str, count: int, counts: list) -> str:
    return label if len(counts) == 1 else f"{label}, {count} thread{'s' if count > 1 else ''}"


def _measure(model, tag: str, dtype: str, threads: Optional[int], runs_dir, exports: list[Path]) -> tuple[dict, Any]:
    """{label: tokens/s} of native torch and each export on the same prompt, and the native model it loaded."""
    # Each on a thread of its own (slm_core.infer.openmp): torch's OpenMP team, spinning on after its last step,
    # ends with its thread instead of taking the cores genai's timing needs (a 100M model's genai figure fell to
    # about half when timed on the thread that had just run native torch).
    loaded = in_fresh_thread(load_model, model, tag=tag, runs_dir=runs_dir)
    prompt = (loaded.tokenizer.encode("Once upon a time") or [0])[:8]
    # A model big enough for every core also tries one: two threads spinning on two busy cores (a training run,
    # another program) decoded a 100M model at 2-3 tokens/s where one thread made 19.
    counts = [threads] if threads else sorted({native_threads(loaded.model), 1})
    # genai on one thread and on its default (every core): a small model's steps are too short for two threads to
    # pay for their synchronisation, and a busy machine's cores are taken (benchmarks/bench_engine_choice.py)
    genai_counts = [threads] if threads else sorted({CORES, 1})
    speeds: dict = {}
    failed: set = set()
    for _ in range(ROUNDS):  # in turn, the best of each: a load that comes and goes spreads over both
        for count in counts:
            label = _with_threads("native torch", count, counts)
            native = in_fresh_thread(_native_speed, loaded.model, prompt, dtype, count)
            speeds[label] = max(speeds.get(label, 0.0), native)
        for export in (e for e in exports if e not in failed):
            for count in genai_counts:
                label = _with_threads(_export_label(export), count, genai_counts)
                try:
                    rate = in_fresh_thread(_genai_speed, export, prompt, count)
                except Exception as error:  # noqa: BLE001 - an export genai cannot run loses the race, said in its log
                    print(f"engine choice: {export} did not run on onnxruntime-genai ({error})", flush=True)
                    failed.add(export)
                    break
                speeds[label] = max(speeds.get(label, 0.0), rate)
    return speeds, loaded


def _native_speed(model, prompt: list[int], dtype: str, threads: Optional[int]) -> float:
    """Greedy batch-1 decode on the native engine's own decoder and thread count (slm_core.infer.engine)."""
    if not is_quantized(model):
        model.to(pick_dtype(model, dtype))
    before = torch.get_num_threads()  # set_num_threads also becomes later threads' default: put it back
    torch.set_num_threads(native_threads(model, threads))
    try:
        return _timed_native(model, prompt, dtype)
    finally:
        torch.set_num_threads(before)


def native_threads(model, threads: Optional[int] = None) -> int:
    """Threads native torch decodes on: as slm_core.infer.engine.Engine (one for a small model: a second spins on
    the core the first needs; every core for a bigger one), unless `threads` says."""
    weights = sum(t.numel() for t in (*model.parameters(), *model.buffers()))  # a quantized model's are buffers
    return threads or (1 if weights <= ONE_THREAD_MAX_PARAMS else CORES)


def _timed_native(model, prompt: list[int], dtype: str) -> float:
    steps = WARMUP_TOKENS + PROBE_TOKENS
    decoder = Decoder(model, slots=1, max_len=len(prompt) + steps + 1, one_row_half=None if dtype == "auto" else False)
    tokens = decode_one(decoder, prompt, SamplingParams(max_new_tokens=steps, temperature=0), stop_ids=())
    for _ in range(WARMUP_TOKENS):
        next(tokens)
    start = time.perf_counter()
    count = sum(1 for _ in tokens)
    return count / (time.perf_counter() - start)


def _genai_speed(folder: Path, prompt: list[int], threads: Optional[int]) -> float:
    """Greedy batch-1 decode on onnxruntime-genai's own Generator loop (no end-of-text stop)."""
    engine = onnx.OnnxEngine(folder, threads=threads, slots=1)
    try:
        og, steps = engine.og, WARMUP_TOKENS + PROBE_TOKENS
        params = og.GeneratorParams(engine.model)
        length = len(prompt) + steps
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        generator = og.Generator(engine.model, params)
        generator.append_tokens(prompt)
        for _ in range(WARMUP_TOKENS):
            generator.generate_next_token()
        start, count = time.perf_counter(), 0
        while not generator.is_done():
            generator.generate_next_token()
            count += 1
        return count / (time.perf_counter() - start)
    finally:
        engine.close()


def _read_cache(runs: Path) -> dict:
    try:
        cache = read_state(runs / CACHE_FILE)
    except SLMError:  # damaged: moved aside by read_state; measure again
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(runs: Path, cache: dict) -> None:
    try:
        runs.mkdir(parents=True, exist_ok=True)
        atomic_write_json(runs / CACHE_FILE, cache)
    except OSError as error:  # a read-only runs folder: the choice stands, measured again next time
        print(f"engine choice: could not cache it in {runs / CACHE_FILE} ({error})", flush=True)

