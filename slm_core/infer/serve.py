"""`slm serve MODEL`: an OpenAI-compatible HTTP server (models, completions, chat completions, streaming)
in front of one engine, whose decode loop batches every client's steps."""


import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from slm_core.errors import SLMError
from slm_core.infer.engine import Engine
from slm_core.infer.guard import LocalGuard, allowed_hosts
from slm_core.infer.onnx import OnnxEngine, is_genai_folder
from slm_core.infer.sampling import SamplingParams
from slm_core.models.load import load_model
from slm_core.models.templates import content_text, format_prompt

DEFAULT_PORT = 8000
# On Ctrl-C or SIGTERM, streams still open after this long are cut: without a limit uvicorn waits for every one of
# them to end (a client that stops reading would hold the server open).
GRACEFUL_SHUTDOWN_S = 3
# A stream sends its first text at once, then at most one event per interval carrying every token decoded meanwhile.
# Each event holds the GIL the decode loop needs; 50 a second reads smoothly: benchmarks/bench_chat.py (serve rows)
STREAM_INTERVAL_S = 0.02


class APIError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Served:
    """What the server needs to answer: the engine, the model's id, how chat messages become a prompt."""
    engine: Any  # slm_core.infer.engine.Engine or slm_core.infer.onnx.OnnxEngine
    model_id: str
    chat_ids: Callable[[list], list[int]]
    api_key: Optional[str] = None
    created: int = 0
    stream_interval_s: float = STREAM_INTERVAL_S


def chat_encoder(template: Optional[str], tokenizer: Any) -> Callable[[list], list[int]]:
    """messages → prompt ids, as the Chat page builds them: the model's own Jinja chat template where its
    tokenizer has one (a Hub model, or a run tuned in it: template 'model'), with its control tokens as
    their ids; else our template (slm_core.models.templates); a base model gets the messages' text as is."""
    def encode(messages: list) -> list[int]:
        turns = [{"role": str(m.get("role", "user")), "content": content_text(m.get("content"))} for m in messages]
        if getattr(tokenizer, "chat_template", None) and template in (None, "model"):
            return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
        return tokenizer.encode(format_prompt(turns, template))

    return encode


def _check_content(messages: list) -> None:
    """OpenAI's shapes only: a string, or a list of {"type": "text", "text": str} parts (null for an
    assistant turn that called tools); a number or an object is not text."""
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str) or (content is None and message.get("role") == "assistant"):
            continue
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):
            continue
        raise APIError(400, f"messages[{i}].content must be a string or a list of text parts",
                       param=f"messages[{i}].content")


# ---- request → sampling ------------------------------------------------------------------------------

def _field(body: dict, name: str, kinds, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise APIError(400, f"'{name}' must be a number, got {value!r}", param=name)
    if not isinstance(value, kinds):
        raise APIError(400, f"'{name}' has the wrong type: {value!r}", param=name)
    return value


def sampling_from(body: dict, prompt_len: int, context: int, default_max: Optional[int]) -> SamplingParams:
    """OpenAI fields (plus vLLM's top_k and repetition_penalty) → SamplingParams, checked."""
    max_tokens = _field(body, "max_completion_tokens", int, None)
    max_tokens = _field(body, "max_tokens", int, max_tokens)
    room = context - prompt_len
    if room <= 0:
        raise APIError(400, f"This model's maximum context length is {context} tokens; your prompt has "
                            f"{prompt_len}. Shorten the prompt.", param="messages", code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = room if default_max is None else min(default_max, room)
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise APIError(400, "'stop' must be a string or a list of at most 4 strings", param="stop")
    top_k = _field(body, "top_k", int, 0)
    try:  # SamplingParams refuses out-of-range knobs (slm_core.validate); say it in the API's words
        params = SamplingParams(max_new_tokens=max_tokens,
                                temperature=float(_field(body, "temperature", (int, float), 1.0)),
                                top_k=0 if top_k == -1 else top_k,  # vLLM's -1 means off
                                top_p=float(_field(body, "top_p", (int, float), 1.0)),
                                repetition_penalty=float(_field(body, "repetition_penalty", (int, float), 1.0)),
                                seed=_field(body, "seed", int, None), stop=tuple(stop))
    except SLMError as error:
        message = str(error).replace("max_new_tokens", "max_tokens")
        raise APIError(400, message, param=message.split("=")[0] if "=" in message else None) from None
    if prompt_len + max_tokens > context:
        raise APIError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                            f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the "
                            "completion). Reduce the prompt or max_tokens.", param="max_tokens",
                       code="context_length_exceeded")
    if _field(body, "n", int, 1) != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    return params


# ---- the two generation endpoints --------------------------------------------------------------------

def _prepare(served: Served, body: dict, chat: bool) -> tuple[list[int], SamplingParams]:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not model:
        raise APIError(400, "'model' is required", param="model")
    if model != served.model_id:
        raise APIError(404, f"The model '{model}' does not exist; this server serves '{served.model_id}'",
                       param="model", code="model_not_found")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and "role" in m for m in messages):
            raise APIError(400, "'messages' must be a non-empty list of {role, content}", param="messages")
        _check_content(messages)
        ids = served.chat_ids(messages)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise APIError(400, "'prompt' must be a non-empty string", param="prompt")
        ids = served.engine.tokenizer.encode(prompt)
    if not ids:
        raise APIError(400, "the prompt is empty after tokenization", param="prompt")
    params = sampling_from(body, len(ids), served.engine.context_length, None if chat else 16)
    return ids, params


def _usage(prompt_len: int, stats: dict) -> dict:
    done = stats.get("tokens", 0)
    return {"prompt_tokens": prompt_len, "completion_tokens": done, "total_tokens": prompt_len + done}


def _choice(chat: bool, text: Optional[str], finish: Optional[str], stream: bool, first: bool = False) -> dict:
    if not chat:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    if stream:
        delta = {} if text is None else ({"role": "assistant", "content": text} if first else {"content": text})
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}


def respond(served: Served, body: dict, chat: bool) -> dict:
    """A whole (non-streamed) completion."""
    ids, params = _prepare(served, body, chat)
    stats: dict = {}
    text = "".join(served.engine.stream(ids, params, stats))
    return {"id": _new_id(chat), "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": served.model_id,
            "choices": [_choice(chat, text, stats.get("finish_reason", "stop"), stream=False)],
            "usage": _usage(len(ids), stats)}


def respond_stream(served: Served, body: dict, chat: bool) -> Iterator[str]:
    """Server-sent events: one chunk per text delta, a last chunk with finish_reason, optionally usage,
    then [DONE]. The request is validated before the first byte, so errors still get a 4xx."""
    ids, params = _prepare(served, body, chat)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return _events(served, ids, params, chat, include_usage)


def _events(served: Served, ids, params, chat: bool, include_usage: bool) -> Iterator[str]:
    stats: dict = {}
    base = {"id": _new_id(chat), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": served.model_id}
    first = True
    if chat:  # OpenAI opens a chat stream with the role
        yield _sse({**base, "choices": [_choice(chat, "", None, True, first=True)]})
        first = False
    for delta in served.engine.stream(ids, params, stats, interval_s=served.stream_interval_s):
        yield _sse({**base, "choices": [_choice(chat, delta, None, True, first)]})
    yield _sse({**base, "choices": [_choice(chat, None if chat else "", stats.get("finish_reason", "stop"), True)]})
    if include_usage:
        yield _sse({**base, "choices": [], "usage": _usage(len(ids), stats)})
    yield "data: [DONE]\n\n"


async def pump(events: Iterator[str]):
    """Stream a sync SSE generator from one thread of its own, yielding whatever it has produced since the
    last write as one piece. Starlette would otherwise hop to its thread pool for every event (an anyio
    future and two wake-ups per token per client): Python work that holds the GIL the decode loop needs
    between its ops. A client that goes away stops the producer, whose generator then cancels its request."""
    import asyncio
    import threading

    loop, queue, gone = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in events:
                loop.call_soon_threadsafe(queue.put_nowait, item)
                if gone.is_set():
                    break
        except BaseException as error:  # surfaces in the response task, as Starlette's own iteration would
            loop.call_soon_threadsafe(queue.put_nowait, error)
        finally:
            events.close()  # stream_request's finally frees the engine slot
            loop.call_soon_threadsafe(queue.put_nowait, end)

    threading.Thread(target=produce, name="slm-sse", daemon=True).start()
    try:
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            text = "".join(i for i in items if isinstance(i, str))
            if text:
                yield text
            for item in items:
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
    finally:
        gone.set()


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


# ---- the app -----------------------------------------------------------------------------------------

def create_app(served: Served):
    """The FastAPI app for `served` (importable for tests and for mounting elsewhere)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="SLM Studio OpenAI-compatible server")
    served.created = served.created or int(time.time())

    @app.exception_handler(APIError)
    async def api_error(_request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def internal_error(_request, error: Exception):  # a bug answers 500 in the API's shape; server stays up
        body = APIError(500, f"internal error: {type(error).__name__}: {error}", kind="server_error").body()
        return JSONResponse(body, status_code=500)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if served.api_key and request.headers.get("authorization", "") != f"Bearer {served.api_key}":
            error = APIError(401, "Incorrect API key provided.", code="invalid_api_key", kind="authentication_error")
            return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.model_id, "object": "model", "created": served.created,
                                            "owned_by": "slm-studio"}]}

    async def handle(request: Request, chat: bool):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise APIError(400, f"the request body is not valid JSON: {error}") from None
        if isinstance(body, dict) and body.get("stream"):
            events = await run_in_threadpool(respond_stream, served, body, chat)
            return StreamingResponse(pump(events), media_type="text/event-stream")
        return await run_in_threadpool(respond, served, body, chat)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    return app


# ---- command line: `slm serve` -----------------------------------------------------------------------


def run_server(served: Served, host: str, port: int, allow_hosts: Sequence[str] = ()) -> int:
    """Serve until Ctrl-C or SIGTERM; 1 when the server could not start (a port taken). Requests must name
    this server's address (LocalGuard: no DNS rebinding, no cross-site requests)."""
    import uvicorn

    print(f"serving '{served.model_id}' ({served.engine.description}) on http://{host}:{port}/v1", flush=True)
    app = LocalGuard(create_app(served), allowed_hosts(host, allow_hosts), port)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    if not hasattr(served.engine, "run_here"):  # onnxruntime-genai runs its own threads
        uvicorn.Server(config).run()
        served.engine.close()
        return 0
    return serve_decoding_here(served, uvicorn.Server(config))


def serve_decoding_here(served: Served, server) -> int:
    """HTTP on a thread of its own, the native decode loop on this thread (the one that loaded the model:
    see Engine.run_here). Ctrl-C or SIGTERM stops both; a server that cannot start (port taken) ends the loop."""
    import signal
    import threading

    engine = served.engine
    http = threading.Thread(target=server.run, name="slm-http", daemon=True)

    def flag_stop(*_) -> None:
        # Flags only: a handler runs between two bytecodes of this thread, maybe while it holds the request
        # queue's lock, which `engine.close()` takes (that deadlocked a SIGTERM). The loop sees `closed`.
        server.should_exit = True
        engine.closed = True

    def watch() -> None:
        http.join()
        engine.close()

    previous = {sig: signal.signal(sig, flag_stop) for sig in (signal.SIGINT, signal.SIGTERM)}  # as uvicorn.run does
    http.start()
    threading.Thread(target=watch, name="slm-http-watch", daemon=True).start()
    try:
        engine.run_here()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.should_exit = True
        engine.close()
        http.join(timeout=GRACEFUL_SHUTDOWN_S + 5)
    return 0 if server.started else 1


def load_served(model: str, engine: str = "native", tag: str = "best", slots: int = 8, dtype: str = "auto",
                threads: Optional[int] = None, compile: bool = False, name: Optional[str] = None,
                runs_dir: Optional[Path] = None) -> Served:
    """Load MODEL into the chosen engine, with its template and id."""

    if engine == "onnx" or is_genai_folder(model):  # an onnxruntime-genai folder runs only there
        runtime = OnnxEngine(model, threads=threads, slots=slots, inline_alone=False)  # clients overlap
        return Served(runtime, name or Path(model).name, chat_encoder(runtime.template, runtime.tokenizer))

    loaded = load_model(model, tag=tag, runs_dir=runs_dir)
    runtime = Engine(loaded.model, loaded.tokenizer, slots=slots, dtype=dtype, compile=compile, threads=threads)
    return Served(runtime, name or Path(str(model)).name, chat_encoder(loaded.template, loaded.tokenizer))
