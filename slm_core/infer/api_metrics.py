"""The server's Prometheus `/metrics`: requests by endpoint and status, prompt and completion tokens, requests in
flight. Written in the text exposition format by hand: four series do not need prometheus_client (not a
dependency), whose default registry is process-wide (two servers in one process would share counters)."""

from __future__ import annotations

import threading
from collections import Counter

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/tokenize",
             "/detokenize", "/tokenizer_info")
PREFIX = "slm"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter = Counter()  # (endpoint, status) -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.in_flight = 0

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, path: str, status: int) -> None:
        endpoint = path if path in ENDPOINTS else "other"  # a label per unknown path would grow without bound
        with self._lock:
            self.in_flight -= 1
            self.requests[(endpoint, str(status))] += 1

    def tokens(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def render(self, engine: str = "") -> str:
        """The exposition text; `engine`: the engine decoding now, as an info series' label."""
        with self._lock:
            requests = sorted(self.requests.items())
            prompt, completion, in_flight = self.prompt_tokens, self.completion_tokens, self.in_flight
        lines = [f"# HELP {PREFIX}_requests_total HTTP requests answered, by endpoint and status code.",
                 f"# TYPE {PREFIX}_requests_total counter"]
        lines += [f'{PREFIX}_requests_total{{endpoint="{e}",status="{s}"}} {n}' for (e, s), n in requests]
        lines += [f"# HELP {PREFIX}_prompt_tokens_total Prompt tokens of answered completions.",
                  f"# TYPE {PREFIX}_prompt_tokens_total counter", f"{PREFIX}_prompt_tokens_total {prompt}",
                  f"# HELP {PREFIX}_completion_tokens_total Tokens generated.",
                  f"# TYPE {PREFIX}_completion_tokens_total counter",
                  f"{PREFIX}_completion_tokens_total {completion}",
                  f"# HELP {PREFIX}_requests_in_flight HTTP requests being answered now (streams until they end).",
                  f"# TYPE {PREFIX}_requests_in_flight gauge", f"{PREFIX}_requests_in_flight {in_flight}"]
        if engine:
            label = engine.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
            lines += [f"# HELP {PREFIX}_engine_info The engine decoding requests now (engine choice: auto, native, onnx).",
                      f"# TYPE {PREFIX}_engine_info gauge", f'{PREFIX}_engine_info{{engine="{label}"}} 1']
        return "\n".join(lines) + "\n"
