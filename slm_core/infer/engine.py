"""The native inference engine: continuous batching over one `Decoder` (slm_core.infer.decoder). `Engine`
serves many requests from one decode loop thread, each sampled with its own settings and seed."""

from __future__ import annotations

import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from slm_core.errors import SLMError
from slm_core.infer.decoder import Decoder
from slm_core.infer.openmp import CORES
from slm_core.infer.requests import QueuedRequest, RequestLoop
from slm_core.infer.sampling import SamplingParams, TextStream, sample_next
from slm_core.infer.speculative import Speculator
from slm_core.models.quantized import is_quantized
from slm_core.system import cpu_has_native_bf16

DEFAULT_SLOTS = 8
# Up to here one decode thread: a second gains nothing and spins on the core streaming needs: benchmarks/bench_chat.py
ONE_THREAD_MAX_PARAMS = 10_000_000
IDLE_EXIT_S = 2.0  # an idle decode loop thread ends after this long, and its OpenMP team with it (slm_core.infer.openmp)
# A loop on the main thread (run_here) wakes this often while idle, to see a stop that a signal handler flagged
# (`closed`): the handler may not touch the request queue (slm_core.infer.serve), so nothing else need wake the loop.
IDLE_POLL_S = 0.25


def pick_dtype(model: torch.nn.Module, dtype: str = "auto") -> torch.dtype:
    """'auto': bf16 where the hardware computes it natively (CUDA with bf16, AVX-512 BF16/AMX CPUs), else
    fp32 (where the decoder still reads a memory-bound model's one-row steps from a half-precision copy: see
    slm_core.infer.decoder.ONE_ROW_HALF_MIN_PARAMS; 'fp32' is exact fp32 throughout). Quantized models keep their
    own compute dtype (their kernels choose)."""
    if dtype in ("fp32", "float32"):
        return torch.float32
    if dtype in ("bf16", "bfloat16"):
        return torch.bfloat16
    if dtype != "auto":
        raise SLMError(f"dtype {dtype!r} is unknown: use auto, fp32 or bf16")
    if is_quantized(model):
        return torch.float32
    device = next(model.parameters()).device
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32

    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


# ---- one sequence -----------------------------------------------------------------------------------

@dataclass
class Sequence:
    """A request's decoding state inside the decoder: its slot, tokens so far and sampler."""
    prompt: list[int]
    params: SamplingParams
    stop_ids: frozenset
    slot: int = -1
    tokens: list[int] = field(default_factory=list)
    generated: int = 0
    generator: Optional[torch.Generator] = None
    seen: Optional[torch.Tensor] = None  # (V,) bool: tokens the repetition penalty pushes down
    drafted: int = 0  # speculative decoding: draft tokens proposed for this sequence, and those kept
    drafts_kept: int = 0

    @torch.inference_mode()
    def start(self, decoder: Decoder, slot: int) -> torch.Tensor:
        """Prefill into `slot`; the logits for the first new token."""
        self.slot = slot
        self.tokens = list(self.prompt)[-decoder.max_len:]
        self.generator = self.params.make_generator(decoder.device)
        if self.params.repetition_penalty != 1.0:
            self.seen = torch.zeros(decoder.config.vocab_size, dtype=torch.bool, device=decoder.device)
            self.seen[torch.tensor(self.tokens, device=decoder.device)] = True
        return decoder.prefill(slot, self.tokens)

    def pick(self, logits: torch.Tensor) -> int:
        """logits (V,) fp32 → the next token, with this request's settings."""
        p = self.params
        history = self.seen.nonzero()[:, 0] if self.seen is not None else logits.new_empty(0, dtype=torch.long)
        return sample_next(logits, history, p.temperature, p.top_k, p.top_p, p.repetition_penalty, self.generator)

    @torch.inference_mode()
    def accept(self, token: int, decoder: Decoder) -> Optional[torch.Tensor]:
        """Record `token`; when the cache is full, slide (re-read the last half as a fresh prefix) and
        return the new logits, else None (the next batched step computes them)."""
        self.tokens.append(token)
        self.generated += 1
        if self.seen is not None:
            self.seen[token] = True
        if len(self.tokens) > decoder.max_len:
            self.tokens = self.tokens[-(decoder.max_len // 2):]
            return decoder.prefill(self.slot, self.tokens)
        return None

    @property
    def position(self) -> int:
        return len(self.tokens) - 1


@torch.inference_mode()
def pick_tokens(seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
    """logits (B, V) → one token per sequence; plain greedy rows share one argmax (one host sync)."""
    plain = [i for i, s in enumerate(seqs) if s.params.temperature <= 0 and s.seen is None]
    if len(plain) == len(seqs):  # every row greedy: no gather
        return logits.argmax(-1).tolist()
    out = [0] * len(seqs)
    if plain:
        best = logits[plain].argmax(-1).tolist()
        for i, token in zip(plain, best):
            out[i] = token
    for i, seq in enumerate(seqs):
        if i not in plain:
            out[i] = seq.pick(logits[i])
    return out


def decode_one(decoder: Decoder, prompt_ids: list[int], params: SamplingParams,
               stop_ids=(), speculator: Optional[Speculator] = None) -> Iterator[int]:
    """Batch-1 generation on slot 0 of `decoder`, synchronously (no thread): the native path of
    `slm generate`. Yields new ids; stops at a stop id (not yielded) or the token budget. With a `speculator`
    each round drafts several tokens and the target checks them in one pass (slm_core.infer.speculative)."""
    seq = Sequence(prompt_ids, params, frozenset(stop_ids))
    logits = seq.start(decoder, 0)[None]
    if speculator is not None:
        yield from _decode_speculative(decoder, seq, logits[0], speculator)
        return
    while seq.generated < params.max_new_tokens:
        token = pick_tokens([seq], logits)[0]
        if token in seq.stop_ids:
            return
        yield token
        fresh = seq.accept(token, decoder)
        if seq.generated >= params.max_new_tokens:
            return
        logits = fresh[None] if fresh is not None else decoder.step([0], [token], [seq.position])


def _decode_speculative(decoder: Decoder, seq: Sequence, pending: torch.Tensor,
                        speculator: Speculator) -> Iterator[int]:
    """decode_one's loop in rounds: `pending` is the target's logits after the whole (prefilled) sequence."""
    params, fed = seq.params, len(seq.tokens)
    speculator.measure_baseline(decoder, 0, fed, seq.tokens[-1])  # position `fed` is written first by the next round
    while seq.generated < params.max_new_tokens:
        new = speculator.round(decoder, 0, seq.tokens, fed, pending, seq.seen, params, seq.generator,
                               params.max_new_tokens - seq.generated)
        fresh = None
        for token in new:  # a round fits the cache, so only its last token can make the sequence slide
            if token in seq.stop_ids:
                return
            yield token
            fresh = seq.accept(token, decoder)
            if seq.generated >= params.max_new_tokens:
                return
        pending, fed = (fresh, len(seq.tokens)) if fresh is not None else (None, len(seq.tokens) - 1)


# ---- the engine: many requests, one decode loop -----------------------------------------------------

class Request(QueuedRequest):
    """Handle on one submitted generation: iterate it (or `chunks()`) for token ids."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, stop_ids):
        super().__init__()
        self.seq = Sequence(list(prompt_ids), params, frozenset(stop_ids))
        self.baseline_s: Optional[float] = None  # speculative decoding: the target's one-row step, for the speed-up

    @property
    def generated(self) -> int:
        return self.seq.generated


class Engine(RequestLoop):
    """One model, a `Decoder` with `slots` rows and a daemon thread that steps every active request.

    `submit` never blocks on other requests: a request waits only for a free slot (and then only
    for the step in progress), so concurrent clients stream together instead of one after another."""

    backend = "native"
    thread_name = "slm-engine"

    def __init__(self, model: torch.nn.Module, tokenizer, slots: int = DEFAULT_SLOTS,
                 max_len: Optional[int] = None, dtype: str = "auto", compile: bool = False,
                 threads: Optional[int] = None, draft: Optional[torch.nn.Module] = None):
        """`draft`: a model with the same tokenizer (the caller checks: speculative.check_draft) that drafts tokens
        for a request decoding alone (see _step)."""
        super().__init__()
        target = pick_dtype(model, dtype)

        if not is_quantized(model) and next(model.parameters()).dtype != target:
            model = model.to(target)
        self.model, self.tokenizer = model, tokenizer
        one_row_half = None if dtype == "auto" else False
        self.decoder = Decoder(model, slots=slots, max_len=max_len, compile=compile, one_row_half=one_row_half)
        self.speculator = None
        if draft is not None:
            if not is_quantized(draft) and next(draft.parameters()).dtype != target:
                draft = draft.to(target)
            self.speculator = Speculator(draft, self.decoder.max_len, one_row_half)
        self.threads = threads  # None: every core (one for a small model); the Studio lowers it while a run trains
        weights = sum(t.numel() for t in (*model.parameters(), *model.buffers()))  # a quantized model's are buffers
        self._default_threads = 1 if weights <= ONE_THREAD_MAX_PARAMS else CORES
        self._exit_when_idle = True
        self.active: list[Request] = []
        self.free = list(range(slots))

    @property
    def description(self) -> str:
        dtype = str(self.decoder.dtype).replace("torch.", "")
        if self.decoder.one_row_half:
            dtype += f", {self.decoder.half_kind} one-row copy"
        draft = ""
        if self.speculator is not None:
            n = sum(p.numel() for p in self.speculator.decoder.model.parameters())
            draft = f", speculative with a {n / 1e6:.1f}M draft"
        return (f"native torch ({dtype}, {self.decoder.slots} slots{', compiled' if self.decoder._compiled else ''}"
                f"{draft})")

    @property
    def decode_threads(self) -> int:
        """Threads the decode loop runs on: the budget, else the default for this model's size."""
        return self.threads or self._default_threads

    @property
    def context_length(self) -> int:
        return self.decoder.config.context_length

    def submit(self, prompt_ids: list[int], params: SamplingParams, stop_ids=None) -> Request:
        if not prompt_ids:
            raise SLMError("the prompt is empty after tokenization; type something to continue from")
        stop_ids = (self.tokenizer.eot_id,) if stop_ids is None and self.tokenizer is not None else (stop_ids or ())
        return self._enqueue(Request(prompt_ids, params, stop_ids), params.max_new_tokens)

    def run_here(self) -> None:
        """Run the decode loop in the calling thread until `close()`, for a process whose calling thread loaded
        the model (`slm serve`). OpenMP gives each thread that runs parallel ops a team of its own; a decode
        loop in a second thread, beside the team the loading thread made, measured ~30% slower here (a 100M
        model: 31 against 44 tokens/s on 2 cores), and one thread for both is as fast as the first alone."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise SLMError("this engine's decode loop already runs in another thread")
            self._thread = threading.current_thread()
            self._exit_when_idle = False
        self._loop()

    def in_use(self) -> bool:
        """Whether requests are decoding or waiting (a replaced engine is closed once it is not)."""
        return bool(self.active) or not self.waiting.empty()

    def close(self) -> None:
        """Stop the loop; requests in flight or waiting end (finish_reason 'cancelled'). Waits for a loop thread
        of its own to end (within a step): one still inside torch when the interpreter exits can abort it."""
        self.closed = True
        self.waiting.put(None)
        with self._lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                self._drain()
        if thread is not None and self._exit_when_idle and thread is not threading.current_thread():
            thread.join(timeout=10)

    @torch.inference_mode()
    def _loop(self) -> None:
        pending: list[Request] = []  # taken off the queue, waiting for a free slot, in arrival order
        while not self.closed:
            want = self.decode_threads  # the budget may change between steps
            if torch.get_num_threads() != want:
                torch.set_num_threads(want)
            if not self.active and not pending:  # idle: sleep until a request arrives, or end the thread
                try:
                    pending.append(self.waiting.get(timeout=IDLE_EXIT_S if self._exit_when_idle else IDLE_POLL_S))
                except queue.Empty:
                    if self._exit_when_idle and self._forget_idle_thread():
                        return
                    continue
            while True:
                try:
                    pending.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
            pending = [r for r in pending if r is not None]
            self._admit(pending)
            if self.active:
                try:
                    self._step()
                except Exception as error:  # a bug or an out-of-memory ends these requests, not the engine
                    for request in list(self.active):
                        request.events.put(error)
                        self._release(request, None)
        for request in list(self.active) + pending:
            self._release(request, "cancelled")
        with self._lock:
            self._drain()

    def _forget_idle_thread(self) -> bool:
        """Whether this idle loop thread may end: nothing arrived meanwhile. The next submit, seeing no thread,
        starts one (RequestLoop._enqueue)."""
        with self._lock:
            if self.waiting.empty():
                self._thread = None
                return True
        return False

    def _drain(self) -> None:
        while True:
            try:
                request = self.waiting.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                self._release(request, "cancelled")

    def _admit(self, pending: list) -> None:
        """Prefill waiting requests into free slots; each emits its first token at once."""
        while self.free and pending:
            request = pending.pop(0)
            if request.cancelled:
                self._release(request, "cancelled")
                continue
            slot = self.free.pop(0)
            try:
                logits = request.seq.start(self.decoder, slot)
            except Exception as error:  # this request fails alone (e.g. out of memory on a long prompt)
                self.free.append(slot)
                self.free.sort()
                request.events.put(error)
                self._release(request, None)
                continue
            self.active.append(request)
            self._emit(request, pick_tokens([request.seq], logits[None])[0])

    def _step(self) -> None:
        live = [r for r in self.active if r.finish_reason is None]
        if not live:
            return
        # Speculative decoding only while one request decodes alone: with more in flight, one batched step already
        # spends the weight reads on several sequences, and the draft has one slot. Requests waiting for a slot
        # join at the next round's end, as they would after a step.
        if self.speculator is not None and len(live) == 1:
            return self._speculate(live[0])
        seqs = [r.seq for r in live]
        logits = self.decoder.step([s.slot for s in seqs], [s.tokens[-1] for s in seqs],
                                   [s.position for s in seqs])
        for request, token in zip(live, pick_tokens(seqs, logits)):
            self._emit(request, token)

    def _speculate(self, request: Request) -> None:
        """One speculative round for a lone request: the engine never feeds a sequence's last token before its
        next step, so the target's cache holds all but that one."""
        seq, spec = request.seq, self.speculator
        fed = len(seq.tokens) - 1
        spec.measure_baseline(self.decoder, seq.slot, fed, seq.tokens[-1])
        before = (spec.drafted, spec.accepted)
        new = spec.round(self.decoder, seq.slot, seq.tokens, fed, None, seq.seen, seq.params, seq.generator,
                         seq.params.max_new_tokens - seq.generated)
        seq.drafted += spec.drafted - before[0]
        seq.drafts_kept += spec.accepted - before[1]
        request.baseline_s = spec.baseline_s
        for token in new:  # the round fits the cache: only its last token can make the sequence slide
            self._emit(request, token)
            if request.finish_reason is not None or request not in self.active:
                return

    def _emit(self, request: Request, token: int) -> None:
        """Deliver `token` (or finish the request) and record it in the sequence."""
        seq = request.seq
        if request.cancelled:
            return self._release(request, "cancelled")
        if token in seq.stop_ids:
            return self._release(request, "stop")
        if request.first_token_at is None:
            request.first_token_at = time.perf_counter()
        request.events.put(token)
        fresh = seq.accept(token, self.decoder)
        if seq.generated >= seq.params.max_new_tokens:
            return self._release(request, "length")
        if fresh is not None:  # slid past the cache: the fresh prefill already gave the next logits
            self._emit(request, pick_tokens([seq], fresh[None])[0])

    def _release(self, request: Request, reason: Optional[str]) -> None:
        if request in self.active:
            self.active.remove(request)
            self.free.append(request.seq.slot)
            self.free.sort()
        request.finish_reason = request.finish_reason or reason
        request.events.put(None)

    # ---- text ----------------------------------------------------------------------------------

    def stream(self, prompt_ids: list[int], params: SamplingParams, stats: Optional[dict] = None,
               stop_ids=None, interval_s: float = 0.0) -> Iterator[str]:
        """Clean text deltas of one request; `stats` gets tokens, ttft_s, seconds, tokens_per_sec, finish_reason.
        `interval_s`: see stream_request."""
        request = self.submit(prompt_ids, params, stop_ids)
        yield from stream_request(request, self.tokenizer, params, stats, interval_s)


def stream_request(request, tokenizer, params: SamplingParams, stats: Optional[dict] = None,
                   interval_s: float = 0.0) -> Iterator[str]:
    """Turn a request's tokens into clean text; stops (and cancels the request) at a stop string.

    `interval_s` > 0 paces the deltas: the first at once, then at most one per interval, carrying all the text
    decoded meanwhile. Every delta is Python work for its reader (an HTTP event, a page update) that holds the
    GIL the decode loop needs between its ops, or, for a request decoded as it is read (a lone genai
    Generator), work done between its tokens. A request that decodes ahead in a loop thread (it has `chunks()`)
    is read less often too: its reader sleeps out the interval instead of waking for each token."""
    text = TextStream(params.stop)
    count = 0
    pieces = _token_bytes(tokenizer)
    decodes_ahead = hasattr(request, "chunks")
    batches = request.chunks() if decodes_ahead else ([t] for t in request)
    held, sent_at = "", float("-inf")
    # Without stop strings, tokens become text only when text is due: no per-token decoding between a lone
    # Generator's steps (with them, every token is checked at once, so the request ends at the stop string).
    unread: list[int] = []
    try:
        for tokens in batches:
            count += len(tokens)
            unread += tokens
            due = time.perf_counter() - sent_at >= interval_s
            if due or text.checks_stops:
                held += text.feed(b"".join(pieces(t) for t in unread))
                unread.clear()
            if held and (text.stopped or due):
                if stats is not None:  # read by whoever receives the text: filled when it is sent
                    fill_stats(stats, request, count)
                yield held
                held, sent_at = "", time.perf_counter()
                if interval_s > 0 and decodes_ahead:  # a slower model loses nothing: its next token is on the way
                    # The request's end wakes it at once: a 128-token reply at 4M lasts ~5 intervals, and a sleep
                    # past its last token delayed the last event by up to 20 ms (bench_engine_choice.py's serve row)
                    getattr(request, "wait_ended", time.sleep)(interval_s)
            if text.stopped:
                request.finish_reason = "stop"
                break
        held += text.feed(b"".join(pieces(t) for t in unread))
        held += text.finish()
        if held:
            yield held
    finally:
        request.cancel()  # a client that stops reading frees its slot at the next step
        if stats is not None:
            fill_stats(stats, request, count)
            stats["finish_reason"] = request.finish_reason or "stop"


_BYTES_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _token_bytes(tokenizer):
    """token id → its bytes, memoized per tokenizer (decoding one id at a time is the hot path)."""
    try:
        cache = _BYTES_CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: a per-stream cache still saves repeats
        cache = {}

    def piece(token: int) -> bytes:
        data = cache.get(token)
        if data is None:
            data = cache[token] = tokenizer.decode_bytes([token])
        return data

    return piece


def fill_stats(stats: dict, request, count: int) -> None:
    now = time.perf_counter()
    first = request.first_token_at
    decode_s = now - first if first else 0.0
    stats.update(tokens=count, seconds=now - request.submitted,
                 ttft_s=(first - request.submitted) if first else None,
                 tokens_per_sec=(count - 1) / decode_s if count > 1 and decode_s > 0 else 0.0)
    seq = getattr(request, "seq", None)
    if seq is not None and seq.drafted:  # speculative decoding took part
        stats.update(draft_accept_rate=seq.drafts_kept / seq.drafted, draft_tokens=seq.drafted)
        baseline = getattr(request, "baseline_s", None)
        if baseline and stats["tokens_per_sec"]:
            stats["speedup"] = stats["tokens_per_sec"] * baseline
