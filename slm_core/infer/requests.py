"""A submitted generation as its reader sees it, whatever backend decodes it: timing, cancellation, the
finish reason and the queue its tokens arrive on. Torch-free, for the onnx backends."""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator, Optional

from slm_core.errors import SLMError


class RequestHandle:
    """What every backend's request has; `slm_core.infer.engine.stream_request` and `fill_stats` read these."""

    def __init__(self):
        self.cancelled = False
        self.submitted = time.perf_counter()
        self.first_token_at: Optional[float] = None
        self.finish_reason: Optional[str] = None  # "stop" | "length" | "cancelled"

    def cancel(self) -> None:
        """The backend stops decoding this request at its next step and frees its slot."""
        self.cancelled = True


class _Events(queue.Queue):
    """A request's token queue that also says when its end (None or an exception) has been put."""

    def __init__(self):
        super().__init__()
        self.ended = threading.Event()

    def _put(self, item) -> None:
        super()._put(item)
        if item is None or isinstance(item, BaseException):
            self.ended.set()


class QueuedRequest(RequestHandle):
    """A request decoded by a loop thread: token ids on `events`, then None (or the exception that ended it)."""

    def __init__(self):
        super().__init__()
        self.events: queue.Queue = _Events()

    def wait_ended(self, timeout: float) -> None:
        """Sleep up to `timeout`, waking at once when the request ends: a reader pacing its updates (an HTTP
        stream) sends the last tokens when they exist, not up to an interval later."""
        self.events.ended.wait(timeout)

    def __iter__(self) -> Iterator[int]:
        for tokens in self.chunks():
            yield from tokens

    def chunks(self) -> Iterator[list[int]]:
        """The tokens in lists: waits for one, then takes every token already delivered, so a reader that
        falls behind (an HTTP stream, a busy page) catches up in one step instead of one per token."""
        while True:
            items = [self.events.get()]
            while items[-1] is not None and not isinstance(items[-1], BaseException):
                try:
                    items.append(self.events.get_nowait())
                except queue.Empty:
                    break
            tokens = [t for t in items if isinstance(t, int)]
            if tokens:
                yield tokens
            if items[-1] is None:
                return
            if isinstance(items[-1], BaseException):
                raise items[-1]


class RequestLoop:
    """Requests queued for one loop thread (`_loop`, the subclass's), started by the first request and again
    by the next one after it ended."""

    thread_name = "slm-loop"

    def __init__(self):
        self.waiting: queue.Queue = queue.Queue()
        self.closed = False
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def _enqueue(self, request: QueuedRequest, max_new_tokens: int) -> QueuedRequest:
        if self.closed:
            raise SLMError("this engine was closed; load the model again")
        if max_new_tokens <= 0:  # nothing to decode: finished before it starts
            request.finish_reason = "length"
            request.events.put(None)
            return request
        self.waiting.put(request)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
                self._thread.start()
        return request

    def _loop(self) -> None:
        raise NotImplementedError
