"""A helper process for the torch-using slm_core calls the page needs (estimates, data preview, tokenizing):
started on demand, gone when idle, one JSON object per line each way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from slm_core.allowlist import AllowList, confined
from slm_core.errors import SLMError

REPO_ROOT = Path(__file__).resolve().parent.parent
IDLE_S = 90.0


class Helper:
    """One helper process, started by the first call and stopped after `idle_s` without calls.
    `module` is what runs in it (`python -m module`): this one, or one that adds to FUNCTIONS."""

    def __init__(self, idle_s: float = IDLE_S, module: str = "studio.helper", runs_dir: Optional[Path] = None,
                 allow_list: Optional[AllowList] = None):
        self.idle_s, self.module, self.runs_dir = idle_s, module, runs_dir
        self.allow_list = allow_list  # the page's folders, enforced on each call (they grow during a session)
        self._proc: Optional[subprocess.Popen] = None
        self._lock = threading.Lock()
        self._timer: Optional[threading.Timer] = None

    def call(self, fn: str, args: dict, on_progress: Optional[Callable[[dict], None]] = None) -> Any:
        with self._lock:
            if self._timer:
                self._timer.cancel()
            proc = self._ensure()
            try:
                roots = None if self.allow_list is None else [str(root) for root in self.allow_list.roots]
                proc.stdin.write(json.dumps({"fn": fn, "args": args, "roots": roots}) + "\n")
                proc.stdin.flush()
                return self._answer(proc, on_progress)
            finally:
                self._timer = threading.Timer(self.idle_s, self._close_if_idle)
                self._timer.daemon = True
                self._timer.start()

    def _answer(self, proc: subprocess.Popen, on_progress) -> Any:
        for line in proc.stdout:
            message = json.loads(line)
            if "progress" in message:
                if on_progress:
                    on_progress(message["progress"])
                continue
            if "error" in message:
                raise SLMError(message["error"])
            if "crash" in message:
                raise RuntimeError(message["crash"])
            return message["result"]
        self._proc = None
        raise SLMError(f"the helper process ended unexpectedly (exit code {proc.wait()}); try again")

    def _ensure(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            if self.runs_dir is not None:  # run names the page sends resolve in the page's runs folder
                env["SLM_RUNS_DIR"] = str(self.runs_dir)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
            self._proc = subprocess.Popen([sys.executable, "-m", self.module], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                          cwd=os.getcwd())
        return self._proc

    def _close_if_idle(self) -> None:
        if self._lock.acquire(blocking=False):  # a call in flight keeps the helper
            try:
                self.close()
            finally:
                self._lock.release()

    def close(self) -> None:
        """Stop the helper (it starts again on the next call)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.stdin.close()  # the helper's loop ends at end of input
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


# ---- inside the helper process ----------------------------------------------------------------

def _describe(model: dict, **kwargs) -> dict:
    from slm_core.config import LoRAConfig, RunConfig
    from slm_core.models.estimate import describe

    config = RunConfig.from_dict({"model": model}).model
    lora = kwargs.pop("lora", None)
    info = describe(config, lora=LoRAConfig(**lora) if lora else None, **kwargs)
    if kwargs.get("timing") and info.get("step"):
        info["step"] = calibrated_step(config, info["step"], kwargs.get("batch_size") or 8,
                                       kwargs.get("grad_accum") or 1, kwargs.get("precision") or "auto",
                                       bool(kwargs.get("grad_checkpointing")))
    return info


MEASURE_TARGET_S = 2.5  # per timed step: the rows of the batch are cut to about this
MEASURE_LIMIT_S = 12.0  # a single row predicted slower than this is not timed (the estimate stays)
_MEASURED: dict = {}  # (model, rows, precision, checkpointing) -> seconds, for this helper's life


def calibrated_step(config, predicted: dict, batch_size: int, grad_accum: int, precision: str,
                    grad_checkpointing: bool) -> dict:
    """The seconds per optimizer step, measured: a few real training steps (forward, backward, AdamW) of
    this model on this machine, now, with whatever else is running on it. The benchmark-based
    `predicted` figure decides how many rows of the batch to time (a big model times one row and
    scales up) and stays the answer where even one row would take too long to time."""
    rows_total = max(1, int(batch_size) * int(grad_accum))
    per_row = predicted["step_s"] / rows_total
    if per_row > MEASURE_LIMIT_S:
        return {**predicted, "measured": False}
    rows = max(1, min(int(batch_size), int(MEASURE_TARGET_S / max(per_row, 1e-9))))
    key = (repr(config), rows, precision, grad_checkpointing, predicted.get("device"))
    if key not in _MEASURED:
        _MEASURED[key] = _time_training_steps(config, rows, precision, grad_checkpointing,
                                              predicted.get("device") or "cpu")
    step_s = _MEASURED[key] * rows_total / rows
    tokens = rows_total * config.context_length
    return {**predicted, "step_s": step_s, "tokens_per_s": tokens / step_s, "measured": True, "timed_rows": rows,
            "predicted_s": predicted["step_s"]}


def _time_training_steps(config, rows: int, precision: str, grad_checkpointing: bool, device: str,
                         steps: int = 2) -> float:
    """The best of `steps` timed training steps (after one warm-up) on a batch of `rows` random sequences."""
    import torch
    import torch.nn.functional as F

    from slm_core.models.estimate import resolve_vocab
    from slm_core.models.model import Transformer
    from slm_core.train.loop import resolve_precision

    config, _ = resolve_vocab(config)
    dev = torch.device(device)
    amp = resolve_precision(precision, dev)
    model = Transformer(config).to(dev)
    model.gradient_checkpointing = grad_checkpointing
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, config.vocab_size, (rows, config.context_length), device=dev)
    best = float("inf")
    for i in range(steps + 1):
        started = time.perf_counter()
        with torch.autocast(dev.type, dtype=amp) if amp is not None else torch.autocast(dev.type, enabled=False):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), x.view(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i:  # the first step allocates optimizer state and warms the kernels
            best = min(best, time.perf_counter() - started)
    return best


def _preview(data: dict, n: int = 5) -> dict:
    from slm_core.config import DataConfig
    from slm_core.data.cache import data_summary, preview

    cfg = DataConfig(**data)
    if _holds_pairs(cfg):
        return _pair_preview(cfg, n)
    return {"summary": data_summary(cfg), "texts": preview(cfg, n=n)}


PAIR_PREVIEW_ROWS = 20_000  # pairs counted for the summary ("at least" beyond): a preview, not a pass over a Hub set


def _holds_pairs(cfg) -> bool:
    """Whether a data source is preference pairs (DPO/ORPO): the shipped set, or a local table whose first record
    (JSONL) or columns have 'chosen' and 'rejected'."""
    from slm_core.data.preference import BUILTIN
    from slm_core.data.sources import load_tabular, source_kind

    if cfg.source.strip() == BUILTIN:
        return True
    if cfg.source.strip().startswith("builtin"):
        return False
    kind, path = source_kind(cfg.source)
    if kind != "tabular":
        return False
    if path.suffix.lower() in (".jsonl", ".ndjson"):  # the first record, without reading the file through datasets
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = next((line for line in handle if line.strip()), "")
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            return False
        return isinstance(record, dict) and {"chosen", "rejected"} <= set(record)
    return {"chosen", "rejected"} <= set(load_tabular(path).column_names)


def _pair_preview(cfg, n: int) -> dict:
    """The Data tab's preview of preference pairs: how many (read and checked as a DPO run reads them) and the first
    ones as prompt / chosen / rejected."""
    import dataclasses

    from slm_core.config import RunConfig
    from slm_core.data.preference import read_rows

    limit = min(cfg.max_documents or PAIR_PREVIEW_ROWS, PAIR_PREVIEW_ROWS)
    rows = read_rows(RunConfig(data=dataclasses.replace(cfg, max_documents=limit)))

    def prompt_text(row) -> str:
        return row.prompt if isinstance(row.prompt, str) else "\n".join(
            f"{m['role']}: {m['content']}" for m in row.prompt)

    texts = [f"prompt:   {prompt_text(r)}\nchosen:   {r.chosen.strip()}\nrejected: {r.rejected.strip()}"
             for r in rows[:n]]
    n_chars = sum(len(prompt_text(r)) + len(r.chosen) + len(r.rejected) for r in rows)
    kind = cfg.source.strip() if cfg.source.strip().startswith("builtin") else "tabular"
    summary = {"source": cfg.source, "kind": kind, "n_documents": len(rows), "n_chars": n_chars,
               "columns": None, "is_instruction": False, "is_pairs": True, "template": cfg.template,
               "complete": len(rows) < limit or limit == cfg.max_documents, "bytes": None}
    return {"summary": summary, "texts": texts}


def _tokenize(config: dict) -> dict:
    from slm_core.config import RunConfig
    from slm_core.data.cache import prepare_data

    started = time.perf_counter()
    data = prepare_data(RunConfig.from_dict(config), progress=True, require_windows=False)
    stats = {k: data.meta.get(k) for k in ("n_documents", "train_documents", "val_documents", "bytes",
                                           "length_histogram")}  # the Data tab's corpus statistics
    return {"train_tokens": data.train_tokens, "val_tokens": data.val_tokens, "n_chars": data.n_chars,
            **stats, "n_vocab": data.tokenizer.n_vocab, "kind": data.tokenizer.kind, "cache_dir": str(data.cache_dir),
            "seconds": time.perf_counter() - started}


def _model_estimate(spec: str, **kwargs) -> dict:
    from slm_core.models.memory import estimate

    return estimate(spec, **kwargs)


def _download(spec: str) -> dict:
    """A Hub id into the Hugging Face cache; plain tqdm bars (enabled, unlike huggingface_hub's own on a
    pipe) carry the progress, which _report_tqdm forwards to the page."""
    import tqdm.std

    from slm_core.models.sources import hub_folder

    return {"path": str(hub_folder(spec, progress=tqdm.std.tqdm))}


def _shrink_summary(teacher: str, layers: int, runs_dir: Optional[str] = None) -> dict:
    from slm_core.models.memory import locate, model_config
    from slm_core.train.shrink import shrink_summary

    config, name = model_config(locate(teacher, runs_dir))
    return {**shrink_summary(config, int(layers)), "teacher": name, "teacher_layers": config.n_layer}


FUNCTIONS: dict[str, Callable[..., Any]] = {"describe": _describe, "preview": _preview, "tokenize": _tokenize,
                                            "model_estimate": _model_estimate, "download": _download,
                                            "shrink_summary": _shrink_summary}


def _report_tqdm(send: Callable[[dict], None]) -> None:
    """Forward slm_core's tqdm bars as progress messages (at most ~4 a second)."""
    import tqdm.std

    original = tqdm.std.tqdm.update
    last: dict[int, float] = {}  # per bar, so a slow bar (files done) is not drowned by a fast one (bytes)

    def update(bar, n=1):
        result = original(bar, n)
        if bar.disable:  # a bar its maker turned off (torch's ONNX exporter does) has no desc
            return result
        now = time.monotonic()
        if now - last.get(id(bar), 0.0) > 0.25 or (bar.total and bar.n >= bar.total):
            last[id(bar)] = now
            send({"progress": {"n": bar.n, "total": bar.total, "desc": bar.desc or ""}})
        return result

    tqdm.std.tqdm.update = update


def main() -> None:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else written to stdout (Python or native code) must not mix with the protocol
    sys.stdout = sys.stderr

    def send(message: dict) -> None:
        out.write(json.dumps(message, default=float) + "\n")
        out.flush()

    _report_tqdm(send)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            with confined(request.get("roots")):  # user-named files open only under the page's folders
                send({"result": FUNCTIONS[request["fn"]](**request["args"])})
        except SLMError as error:
            send({"error": str(error)})
        except Exception as error:  # noqa: BLE001 - the server shows it; the helper lives on
            send({"crash": f"{type(error).__name__}: {error}"})


if __name__ == "__main__":
    main()
