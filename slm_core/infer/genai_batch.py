"""Concurrent onnxruntime-genai requests decoded together by genai's `og.Engine` on one loop thread;
`can_join` sends a request that cannot join a batch to a Generator of its own. A batch that gathers only one
request decodes on a Generator on the loop thread instead: genai's engine is slower than its Generator for a lone
request (benchmarks/bench_engine_choice.py, the serve row)."""

from __future__ import annotations

import queue
import time
from typing import Callable, Iterator, Optional

from slm_core.errors import SLMError
from slm_core.infer.requests import QueuedRequest, RequestLoop
from slm_core.infer.sampling import SamplingParams

TOKEN, FINISHED, FAILED = 1, 2, 8  # og.EngineEventFlags bits
GATHER_S = 0.01  # requests arriving this soon after an idle engine's first one join its batch


def supported(og) -> bool:
    return hasattr(og, "Engine") and hasattr(og, "TurnOptions")


def generator_tokens(generator, request, stops, closing: Callable[[], bool] = lambda: False) -> Iterator[int]:
    """The token ids a genai Generator decodes for `request` (a RequestHandle with params and generated), until
    a stop id (not yielded), its length, its cancellation or `closing()`; sets its finish_reason and first token
    time. The loop genai's own examples run, with as little Python around each step as it can have: at 4M
    parameters a step is ~0.5 ms, and every attribute looked up here is a share of it."""
    limit = request.params.max_new_tokens
    is_done, step, next_tokens = generator.is_done, generator.generate_next_token, generator.get_next_tokens
    while not request.cancelled and not closing():
        if is_done():
            request.finish_reason = request.finish_reason or "length"
            return
        step()
        token = int(next_tokens()[0])
        if token in stops:
            request.finish_reason = request.finish_reason or "stop"
            return
        if not request.generated:
            request.first_token_at = time.perf_counter()
        request.generated += 1
        yield token
        if request.generated >= limit:
            request.finish_reason = request.finish_reason or "length"
            return
    request.finish_reason = request.finish_reason or "cancelled"


class BatchedRequest(QueuedRequest):
    """One request in the batcher: iterate it (or `chunks()`) for token ids."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, stop_ids: frozenset):
        super().__init__()
        self.prompt_ids, self.params, self.stop_ids = prompt_ids, params, stop_ids
        self.generated = 0
        self.handle = None  # og.Request once the loop has begun its turn
        self.turn = None


class GenaiBatcher(RequestLoop):
    thread_name = "slm-genai"

    def __init__(self, og, model, max_len: int, solo: Optional[Callable] = None):
        """`solo(prompt_ids, params)`: a Generator with the prompt appended, for a batch of one (None: batch it)."""
        super().__init__()
        self.og, self.model, self.max_len, self.solo = og, model, max_len, solo
        self.engine = self.buffer = None  # made on the loop thread: genai refuses calls from any other
        self.live: dict = {}  # og.Request → BatchedRequest
        self.batch_opened: Optional[float] = None  # when the forming batch got its first request
        self.admitted = 0  # requests in the forming or running batch
        self.capacity = 4  # genai's configured batch size (read from the engine once it exists)
        self.peak = 0  # most requests decoded in one batch so far

    def can_join(self, params: SamplingParams) -> bool:
        """Whether a request would start at once in a batch (see the module docstring)."""
        if self.closed or (params.seed is not None and not params.greedy):
            return False
        with self._lock:
            now = time.perf_counter()
            if self.batch_opened is None:  # idle: this request opens the next batch
                self.batch_opened, self.admitted = now, 1
                return True
            if now - self.batch_opened < GATHER_S and self.admitted < self.capacity:
                self.admitted += 1
                return True
            return False

    def submit(self, prompt_ids: list[int], params: SamplingParams, stop_ids) -> BatchedRequest:
        return self._enqueue(BatchedRequest(list(prompt_ids), params, frozenset(stop_ids)), params.max_new_tokens)

    def close(self) -> None:
        self.closed = True
        self.waiting.put(None)

    # ---- the loop (the only thread that calls genai) ---------------------------------------------

    def _loop(self) -> None:
        try:
            self._run()
        except Exception as error:  # genai could not make its engine: fail these requests, batch no more
            self.closed = True
            for handle in list(self.live):
                self._finish(handle, None, error)
            while not self.waiting.empty():
                request = self.waiting.get_nowait()
                if request is not None:
                    request.events.put(SLMError(f"onnxruntime-genai's batching engine failed: {error}"))
                    request.events.put(None)

    def _run(self) -> None:
        if self.engine is None:
            self.engine = self.og.Engine(self.model)
            self.buffer = self.engine.create_event_buffer(256)
            self.capacity = max(1, int(self.engine.get_capabilities().configured_max_batch_size))
        while not self.closed:
            if not self.live:
                with self._lock:
                    if self.waiting.empty():
                        self.batch_opened = None  # drained: the next request opens a new batch
                first = self.waiting.get()  # idle: sleep until a request arrives
                time.sleep(max(0.0, (self.batch_opened or 0) + GATHER_S - time.perf_counter()))  # gather
                if first is not None and self.waiting.empty() and self.solo is not None:
                    self._decode_alone(first)  # a batch of one
                    continue
                self._begin(first)
            while not self.waiting.empty():  # no raised queue.Empty per step: only this thread takes from it
                self._begin(self.waiting.get_nowait())
            for handle, request in list(self.live.items()):
                if request.cancelled and request.finish_reason is None:
                    request.finish_reason = "cancelled"
                    handle.cancel_turn(request.turn)  # genai reports CANCELLED at the next run
            if self.live:
                self.peak = max(self.peak, len(self.live))
                try:
                    self.engine.run(self.buffer)
                except Exception as error:  # genai failed the step: these requests end, the server stays up
                    for handle in list(self.live):
                        self._finish(handle, None, error)
                    continue
                for i in range(len(self.buffer)):
                    self._dispatch(self.buffer[i])
        for handle in list(self.live):
            self._finish(handle, "cancelled")
        while True:
            try:
                request = self.waiting.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                request.finish_reason = "cancelled"
                request.events.put(None)

    def _begin(self, request: Optional[BatchedRequest]) -> None:
        if request is None:
            return
        if request.cancelled:
            request.finish_reason = "cancelled"
            request.events.put(None)
            return
        import numpy as np

        og, p, handle = self.og, request.params, None
        try:
            options = og.RequestOptions()
            options.set_max_session_tokens(min(self.max_len, len(request.prompt_ids) + p.max_new_tokens))
            handle = self.engine.create_request(options=options)
            turn = og.TurnOptions(handle)
            turn.set_max_generated_tokens(p.max_new_tokens)
            turn.set_do_sample(not p.greedy)
            turn.set_temperature(0.0 if p.greedy else p.temperature)
            if not p.greedy:  # (a seeded sampler never gets here: can_join sends it to its own Generator)
                turn.set_top_k(p.top_k)  # 0 is off in both
                turn.set_top_p(p.top_p)
            if p.repetition_penalty != 1.0:  # set at all, genai applies it at every step
                turn.set_repetition_penalty(p.repetition_penalty)
            request.turn = handle.begin_turn(np.asarray(request.prompt_ids, dtype=np.int32), turn)
        except Exception as error:  # e.g. a prompt genai refuses: this request fails alone
            if handle is not None:
                handle.close()
            request.events.put(SLMError(f"onnxruntime-genai refused the request: {error}"))
            request.events.put(None)
            return
        request.handle = handle
        self.live[handle] = request

    def _decode_alone(self, request: BatchedRequest) -> None:
        """`request` to its end on a Generator of its own, on this thread (requests arriving meanwhile cannot join
        it and run on Generators of their own, as late arrivals to a running batch do)."""
        try:
            if not request.cancelled and request.params.max_new_tokens > 0:
                generator = self.solo(request.prompt_ids, request.params)
                for token in generator_tokens(generator, request, request.stop_ids, lambda: self.closed):
                    request.events.put(token)
        except Exception as error:  # genai refused the prompt or failed a step: this request fails alone
            request.events.put(SLMError(f"onnxruntime-genai failed this request ({error})"))
        request.finish_reason = request.finish_reason or ("cancelled" if request.cancelled else "length")
        request.events.put(None)

    def _dispatch(self, event) -> None:
        handle = event.request
        request = self.live.get(handle)
        if request is None:
            return
        flags = int(event.flags)
        if flags & TOKEN and request.finish_reason is None:
            token = int(event.token)
            if token in request.stop_ids:
                handle.cancel_turn(request.turn)
                request.finish_reason = "stop"
            elif not request.cancelled:
                request.first_token_at = request.first_token_at or time.perf_counter()
                request.generated += 1
                request.events.put(token)
        if flags & FAILED:
            return self._finish(handle, None, SLMError(f"onnxruntime-genai failed this request ({event.error_code})"))
        if flags & FINISHED:
            reason = str(event.finish_reason).rsplit(".", 1)[-1]
            self._finish(handle, {"EOS": "stop", "STOP_STRING": "stop", "CANCELLED": "cancelled"}.get(reason, "length"))

    def _finish(self, handle, reason: Optional[str], error: Optional[BaseException] = None) -> None:
        request = self.live.pop(handle)
        handle.close()
        if error is not None:
            request.events.put(error)
        request.finish_reason = request.finish_reason or reason
        request.events.put(None)
