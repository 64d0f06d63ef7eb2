"""`slm serve MODEL`: an OpenAI-compatible HTTP server (models, completions, chat completions, streaming; echo,
log-probabilities, token-id and batched prompts, n choices; /health, Prometheus /metrics, vLLM's tokenizer
endpoints) in front of one engine, whose decode loop batches every client's steps. Requests are checked in
slm_core.infer.api_request; log-probabilities are computed by slm_core.infer.scoring."""


import json
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from slm_core.infer import genai_build, onnx
from slm_core.infer.api_logprobs import chat_logprobs, completion_logprobs
from slm_core.infer.api_metrics import Metrics
from slm_core.infer.api_request import (  # noqa: F401  (sampling_from: re-exported)
    APIError,
    Plan,
    check_supported,
    completion_prompts,
    make_plan,
    sampling_from,
)
from slm_core.infer.engine import Engine, _token_bytes, stream_request
from slm_core.infer.engine_choice import Choice, choose, load_class
from slm_core.infer.guard import LocalGuard, allowed_hosts
from slm_core.infer.onnx import OnnxEngine
from slm_core.infer.scoring import score, scored_of, submit_scoring
from slm_core.infer.speculative import check_draft, resolve_draft
from slm_core.models.load import load_model
from slm_core.models.templates import content_text, format_prompt

DEFAULT_PORT = 8000
# On Ctrl-C or SIGTERM, streams still open after this long are cut: without a limit uvicorn waits for every one of
# them to end (a client that stops reading would hold the server open).
GRACEFUL_SHUTDOWN_S = 3
# A stream sends its first text at once, then at most one event per interval carrying every token decoded meanwhile.
# Each event holds the GIL the decode loop needs; 50 a second reads smoothly: benchmarks/bench_chat.py (serve rows)
STREAM_INTERVAL_S = 0.02
CHOICE_THREADS = 32  # choices of one request read at once (their engine requests decode together)
OPEN_PATHS = ("/health", "/metrics")  # answered without the API key, as vLLM does: probes carry no key
BUILD_WAIT_S = 3600  # a background genai export not done by then: the server stays on native torch
LOAD_CHECK_S = 30  # how often a server on --engine auto looks at the machine's load (engine_choice.load_class)
RETIRE_S = 600  # a replaced engine ends once its requests have, or after this long (cancelling what is left)


@dataclass
class Served:
    """What the server needs to answer: the engine, the model's id, how chat messages become a prompt."""
    engine: Any  # slm_core.infer.engine.Engine or slm_core.infer.onnx.OnnxEngine
    model_id: str
    chat_ids: Callable[[list], list[int]]
    api_key: Optional[str] = None
    created: int = 0
    stream_interval_s: float = STREAM_INTERVAL_S
    metrics: Metrics = field(default_factory=Metrics)
    choice: str = ""  # the engine and why (engine_choice's line), as /health and /metrics report it
    switched: threading.Event = field(default_factory=threading.Event)  # set once no engine switch is pending
    load: str = ""  # the machine's load the engine was chosen for ("quiet" | "busy"; "" when not auto)


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


def _vocab_size(engine) -> int:
    native = getattr(engine, "decoder", None)
    return native.config.vocab_size if native is not None else engine.vocab_size


# ---- the two generation endpoints --------------------------------------------------------------------

def _prepare(served: Served, body: dict, chat: bool) -> Plan:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")  # left out: the one model served, as vLLM and llama.cpp's server answer
    if model is not None and model != served.model_id:
        raise APIError(404, f"The model '{model}' does not exist; this server serves '{served.model_id}'",
                       param="model", code="model_not_found")
    check_supported(body, chat)
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and "role" in m for m in messages):
            raise APIError(400, "'messages' must be a non-empty list of {role, content}", param="messages")
        _check_content(messages)
        prompts = [served.chat_ids(messages)]
        if not prompts[0]:
            raise APIError(400, "the prompt is empty after tokenization", param="messages")
    else:
        prompts = completion_prompts(body.get("prompt"), served.engine.tokenizer.encode, _vocab_size(served.engine))
    plan = make_plan(body, chat, prompts, served.engine.context_length)
    if plan.logprobs is not None and not isinstance(served.engine, Engine):
        raise APIError(400, f"log-probabilities are not available from {served.engine.description}: serve the "
                            "model with --engine native for them", param="logprobs")
    return plan


@dataclass
class _Answer:
    """One choice as decoded: its text, the ids of that text (kept only for log-probabilities), why it ended,
    how many tokens were generated, and its `logprobs` in the reply's shape."""
    text: str
    ids: list[int]
    finish_reason: str
    generated: int
    logprobs: Optional[dict] = None


class _Kept:
    """A native request whose token ids are kept as stream_request reads them (it sees the request itself)."""

    def __init__(self, request):
        object.__setattr__(self, "request", request)
        object.__setattr__(self, "ids", [])

    def chunks(self) -> Iterator[list[int]]:
        for tokens in self.request.chunks():
            self.ids.extend(tokens)
            yield tokens

    def __getattr__(self, name: str):
        return getattr(self.request, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self.request, name, value)


def _decode(served: Served, ids: list[int]) -> str:
    return served.engine.tokenizer.decode_bytes(ids).decode("utf-8", errors="replace")


def _answer(served: Served, plan: Plan, index: int, chat: bool) -> _Answer:
    """Decode choice `index` of `plan` and, when asked, score its tokens (and the prompt's, with echo)."""
    which, params = plan.choices[index]
    prompt = plan.prompts[which]
    engine, stats, scoring = served.engine, {}, None
    if params.max_new_tokens == 0:  # nothing to decode: pure scoring, or an echo
        answer = _Answer("", [], "length", 0)
    elif plan.logprobs is None:
        answer = _Answer("".join(engine.stream(prompt, params, stats)), [], "stop", 0)
    else:
        # One token (lm-eval's loglikelihood request): the pass that scores the prompt also gives that token.
        # More: decode as usual, then score the finished text in one pass.
        scoring = submit_scoring(engine, prompt, plan.logprobs, params) if params.max_new_tokens == 1 else None
        request = _Kept(scoring or engine.submit(prompt, params))
        answer = _Answer("".join(stream_request(request, engine.tokenizer, params, stats)), request.ids, "stop", 0)
    answer.finish_reason = stats.get("finish_reason", answer.finish_reason)
    answer.generated = stats.get("tokens", 0)
    if plan.logprobs is None:
        return answer
    piece = _token_bytes(engine.tokenizer)
    answer.ids = _covering(answer.ids, len(answer.text.encode()), piece)  # a stop string cut the text short
    ids = prompt + answer.ids
    if scoring is not None:
        scored = scored_of(scoring)
        logprobs, top = list(scored.logprobs), list(scored.top)
        for token in answer.ids:
            value, best = scored.after(token)
            logprobs.append(value)
            top.append(best)
    elif len(ids) > 1:
        scored = score(engine, ids, plan.logprobs)
        logprobs, top = scored.logprobs, scored.top
    else:
        logprobs, top = [], []
    if chat:
        answer.logprobs = chat_logprobs(piece, ids, logprobs, top, len(prompt), plan.logprobs)
    else:
        answer.logprobs = completion_logprobs(piece, ids, logprobs, top, 0 if plan.echo else len(prompt),
                                              plan.logprobs)
    return answer


def _covering(ids: list[int], length: int, piece: Callable[[int], bytes]) -> list[int]:
    """The first ids whose bytes cover `length` bytes of text."""
    kept, have = [], 0
    for token in ids:
        if have >= length:
            break
        kept.append(token)
        have += len(piece(token))
    return kept


def _answers(served: Served, plan: Plan, chat: bool) -> list[_Answer]:
    """Every choice, read at once so that the engine decodes them together."""
    count = len(plan.choices)
    if count == 1:
        return [_answer(served, plan, 0, chat)]
    with ThreadPoolExecutor(min(count, CHOICE_THREADS), thread_name_prefix="slm-choice") as pool:
        return list(pool.map(lambda i: _answer(served, plan, i, chat), range(count)))


def _usage(plan: Plan, generated: int) -> dict:
    prompt = sum(len(p) for p in plan.prompts)  # each prompt once, whatever n (as OpenAI counts)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def _choice(chat: bool, text: Optional[str], finish: Optional[str], stream: bool, first: bool = False,
            index: int = 0, logprobs: Optional[dict] = None) -> dict:
    if not chat:
        return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
    if stream:
        delta = {} if text is None else ({"role": "assistant", "content": text} if first else {"content": text})
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
            "finish_reason": finish}


def _reply_text(served: Served, plan: Plan, chat: bool, index: int, answer: _Answer) -> str:
    if plan.echo and not chat:
        return _decode(served, plan.prompts[plan.choices[index][0]]) + answer.text
    return answer.text


def respond(served: Served, body: dict, chat: bool) -> dict:
    """A whole (non-streamed) completion: every choice, in order."""
    plan = _prepare(served, body, chat)
    answers = _answers(served, plan, chat)
    usage = _usage(plan, sum(a.generated for a in answers))
    served.metrics.tokens(usage["prompt_tokens"], usage["completion_tokens"])
    return {"id": _new_id(chat), "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": served.model_id,
            "choices": [_choice(chat, _reply_text(served, plan, chat, i, a), a.finish_reason, stream=False, index=i,
                                logprobs=a.logprobs) for i, a in enumerate(answers)],
            "usage": usage}


def respond_stream(served: Served, body: dict, chat: bool) -> Iterator[str]:
    """Server-sent events: one chunk per text delta (each choice's, as they come), a last chunk per choice with
    its finish_reason, optionally usage, then [DONE]. The request is validated before the first byte, so errors
    still get a 4xx."""
    plan = _prepare(served, body, chat)
    return _events(served, plan, chat)


def _events(served: Served, plan: Plan, chat: bool) -> Iterator[str]:
    base = {"id": _new_id(chat), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": served.model_id}
    count = len(plan.choices)
    if chat:  # OpenAI opens a chat stream with the role
        for i in range(count):
            yield _sse({**base, "choices": [_choice(chat, "", None, True, first=True, index=i)]})
    stats = [{} for _ in range(count)]
    if plan.logprobs is not None:
        # Log-probabilities come from one forward pass over a finished choice: its text arrives in one event,
        # with them, once it is complete.
        answers = _answers(served, plan, chat)
        for i, answer in enumerate(answers):
            stats[i] = {"tokens": answer.generated, "finish_reason": answer.finish_reason}
            yield _sse({**base, "choices": [_choice(chat, _reply_text(served, plan, chat, i, answer), None, True,
                                                    index=i, logprobs=answer.logprobs)]})
    else:
        for i, delta in _merged([_deltas(served, plan, i, stats[i]) for i in range(count)]):
            yield _sse({**base, "choices": [_choice(chat, delta, None, True, index=i)]})
    for i in range(count):
        yield _sse({**base, "choices": [_choice(chat, None if chat else "", stats[i].get("finish_reason", "stop"),
                                                True, index=i)]})
    usage = _usage(plan, sum(s.get("tokens", 0) for s in stats))
    served.metrics.tokens(usage["prompt_tokens"], usage["completion_tokens"])
    if plan.include_usage:
        yield _sse({**base, "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


def _deltas(served: Served, plan: Plan, index: int, stats: dict) -> Iterator[str]:
    """Text deltas of choice `index`: the prompt first with echo, then what the engine decodes."""
    which, params = plan.choices[index]
    if plan.echo:
        yield _decode(served, plan.prompts[which])
    if params.max_new_tokens == 0:
        stats["finish_reason"] = "length"
        return
    yield from served.engine.stream(plan.prompts[which], params, stats, interval_s=served.stream_interval_s)


def _merged(streams: list) -> Iterator[tuple[int, str]]:
    """(index, delta) of several streams as each produces them: a thread each (a stream blocks while its
    tokens decode). One stream is read in place."""
    if len(streams) == 1:
        yield from ((0, delta) for delta in streams[0])
        return
    out: queue.Queue = queue.Queue()
    gone = threading.Event()

    def pour(i: int, stream) -> None:
        try:
            for delta in stream:
                out.put((i, delta))
                if gone.is_set():
                    break
        except BaseException as error:  # surfaces in the reader's thread
            out.put((i, error))
        finally:
            stream.close()  # stream_request's finally frees the engine slot
            out.put((i, None))

    for i, stream in enumerate(streams):
        threading.Thread(target=pour, args=(i, stream), name="slm-choice", daemon=True).start()
    left = len(streams)
    try:
        while left:
            i, item = out.get()
            if item is None:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        gone.set()


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
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="SLM Studio OpenAI-compatible server")
    served.created = served.created or int(time.time())
    metrics = served.metrics

    @app.exception_handler(APIError)
    async def api_error(_request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def internal_error(_request, error: Exception):  # a bug answers 500 in the API's shape; server stays up
        body = APIError(500, f"internal error: {type(error).__name__}: {error}", kind="server_error").body()
        return JSONResponse(body, status_code=500)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if served.api_key and request.url.path not in OPEN_PATHS and \
                request.headers.get("authorization", "") != f"Bearer {served.api_key}":
            error = APIError(401, "Incorrect API key provided.", code="invalid_api_key", kind="authentication_error")
            return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    @app.middleware("http")
    async def count(request: Request, call_next):  # outermost: refusals for a bad key are counted too
        path = request.url.path
        metrics.started()
        try:
            response = await call_next(request)
        except BaseException:
            metrics.finished(path, 500)
            raise
        body = response.body_iterator

        async def counted():  # a stream is in flight until its last event
            try:
                async for chunk in body:
                    yield chunk
            finally:
                metrics.finished(path, response.status_code)

        response.body_iterator = counted()
        return response

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.model_id, "object": "model", "created": served.created,
                                            "owned_by": "slm-studio"}]}

    @app.get("/health")
    async def health():  # the model is loaded before the server starts: up means ready, until shutdown
        if getattr(served.engine, "closed", False):
            return JSONResponse({"status": "stopping"}, status_code=503)
        return {"status": "ok", "model": served.model_id, "engine": served.engine.description,
                "engine_choice": served.choice}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(served.engine.description), media_type="text/plain; version=0.0.4")

    # vLLM's tokenizer endpoints: lm-evaluation-harness's local-completions finds them and tokenizes through them
    @app.get("/tokenizer_info")
    async def tokenizer_info():
        tokenizer = served.engine.tokenizer
        special = getattr(tokenizer, "special_tokens", None) or {}
        return {"eos_token": special.get("eos_token"), "bos_token": special.get("bos_token"),
                "pad_token": special.get("pad_token"), "chat_template": getattr(tokenizer, "chat_template", None),
                "model_max_length": served.engine.context_length}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await _json(request)
        text = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise APIError(400, "'prompt' must be a string", param="prompt")
        ids = _encode_special(served.engine.tokenizer, text)
        return {"count": len(ids), "max_model_len": served.engine.context_length, "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await _json(request)
        ids = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise APIError(400, "'tokens' must be a list of token ids", param="tokens")
        return {"prompt": _decode(served, ids)}

    async def handle(request: Request, chat: bool):
        body = await _json(request)
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


async def _json(request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise APIError(400, f"the request body is not valid JSON: {error}") from None


def _encode_special(tokenizer, text: str) -> list[int]:
    """Ids of `text` with special tokens written in it read as theirs, as vLLM's /tokenize does (a harness asks
    for the id of the eos token by its text); a tokenizer without that switch encodes plainly."""
    try:
        return tokenizer.encode(text, allow_special=True)
    except TypeError:
        return tokenizer.encode(text)


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
        # Returned without a stop: the engine was retired for the genai export auto measured faster
        # (_switch_when_built), which decodes on threads of its own. Serve on until Ctrl-C or SIGTERM.
        while served.engine is not engine and not server.should_exit and http.is_alive():
            time.sleep(0.2)  # polled: flag_stop only sets flags
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.should_exit = True
        engine.close()
        if served.engine is not engine:
            served.engine.close()
        http.join(timeout=GRACEFUL_SHUTDOWN_S + 5)
    return 0 if server.started else 1


def load_served(model: str, engine: str = "auto", tag: str = "best", slots: int = 8, dtype: str = "auto",
                threads: Optional[int] = None, compile: bool = False, name: Optional[str] = None,
                runs_dir: Optional[Path] = None, draft: Optional[str] = None, build: bool = False) -> Served:
    """Load MODEL into the engine slm_core.infer.engine_choice picks (auto: the faster here, measured once; native;
    onnx), with its template and id; says which and why. `draft`: a model (or 'auto': a shrunk student of MODEL)
    for speculative decoding of lone requests (slm_core.infer.speculative; native engine only). `build` (`slm
    serve`): a run with no genai export gets one built in the background, and the server switches to it where auto
    then measures it faster (_switch_when_built)."""
    choice = choose(model, tag, engine, dtype, threads, runs_dir, draft=bool(draft), build=build)
    print(choice.line(), flush=True)
    if choice.engine == "onnx":  # an onnxruntime-genai folder (or the run's export) runs only there
        runtime = _genai_runtime(choice.folder, threads or choice.threads, slots)
        served = Served(runtime, name or Path(str(model)).name, chat_encoder(runtime.template, runtime.tokenizer),
                        choice=choice.line(), load=choice.load)
        served.switched.set()
        _follow_load(served, model, engine, tag, dtype, threads, runs_dir, slots)
        return served

    loaded = choice.loaded or load_model(model, tag=tag, runs_dir=runs_dir)
    drafter = None
    if draft:
        source, line = resolve_draft(draft, model, runs_dir)
        drafter = load_model(source, tag=tag, runs_dir=runs_dir)
        check_draft(loaded.tokenizer, drafter.tokenizer, loaded.model.config.vocab_size,
                    drafter.model.config.vocab_size, source)
        print(line, flush=True)
    runtime = Engine(loaded.model, loaded.tokenizer, slots=slots, dtype=dtype, compile=compile,
                     threads=threads or choice.threads, draft=drafter.model if drafter else None)
    served = Served(runtime, name or Path(str(model)).name, chat_encoder(loaded.template, loaded.tokenizer),
                    choice=choice.line(), load=choice.load)
    if choice.export == "building" and engine == "auto" and not draft:
        threading.Thread(target=_switch_when_built, args=(served, choice, model, tag, dtype, threads, runs_dir, slots),
                         name="slm-genai-build", daemon=True).start()
    else:
        served.switched.set()
    if not draft:
        _follow_load(served, model, engine, tag, dtype, threads, runs_dir, slots)
    return served


def _follow_load(served: Served, model, engine: str, tag: str, dtype: str, threads: Optional[int],
                 runs_dir: Optional[Path], slots: int) -> None:
    """On --engine auto, a thread that asks engine_choice again whenever the machine's load changes class (quiet ↔
    busy): a choice measured on idle cores (two native threads) decoded at a tenth of one thread's speed once a
    training run took them. It adopts the new answer's thread count, or moves to genai where that now wins; a
    server on genai stays there (native torch decodes on the thread that loaded it: serve_decoding_here)."""
    if engine != "auto" or onnx.is_genai_folder(Path(str(model))):
        return

    def follow() -> None:
        served.switched.wait()  # a background export's switch first
        served.load = served.load or load_class()
        while not served.engine.closed:  # the server stopped
            time.sleep(LOAD_CHECK_S)
            load = load_class()
            if load == served.load or served.engine.closed:
                continue
            try:
                now = choose(model, tag, "auto", dtype, threads, runs_dir)
                _adopt(served, now, threads, slots)
            except Exception as error:  # noqa: BLE001 - the engine in use keeps serving
                print(f"engine choice: kept {served.engine.description} ({error})", flush=True)
            served.load = load

    threading.Thread(target=follow, name="slm-load-follow", daemon=True).start()


def _adopt(served: Served, now: Choice, threads: Optional[int], slots: int) -> None:
    """Serve from `now` where that can be done in place (see _follow_load)."""
    old, count = served.engine, threads or now.threads
    if isinstance(old, Engine) and now.engine == "native":
        old.threads = count
    elif now.engine == "native":
        return print(f"engine choice: {now.line()}; the server stays on onnxruntime-genai", flush=True)
    elif isinstance(old, Engine) or Path(now.folder) != old.folder or count != old.threads:
        served.engine = _genai_runtime(now.folder, count, slots)
        threading.Thread(target=_retire, args=(old,), name="slm-retire", daemon=True).start()
    served.choice = now.line()
    print(served.choice + f" (the machine turned {now.load})", flush=True)


def _genai_runtime(folder: Path, threads: Optional[int], slots: int) -> OnnxEngine:
    return OnnxEngine(folder, threads=threads, slots=slots, inline_alone=False)  # a server's clients overlap


def _switch_when_built(served: Served, choice: Choice, model, tag: str, dtype: str, threads: Optional[int],
                       runs_dir: Optional[Path], slots: int) -> None:
    """Once the background genai export is built: time both engines (engine_choice, cached like any first load) and,
    where genai wins, answer new requests from it; the native engine ends when its requests have. Logged, and shown
    by /health and /metrics."""
    folder, _, checkpoint = choice.build
    try:
        state = genai_build.wait(folder, checkpoint, timeout=BUILD_WAIT_S)
        if state != "done":
            served.choice = f"engine: native torch (the background onnxruntime-genai export {state})"
            return print(served.choice, flush=True)
        now = choose(model, tag, "auto", dtype, threads, runs_dir)
        old, served.load = served.engine, now.load
        if now.engine == "native":
            old.threads = threads or now.threads
            served.choice = now.line()
            return print(served.choice + " (the server stays on it)", flush=True)
        served.engine = _genai_runtime(now.folder, threads, slots)
        served.choice = now.line()
        print(served.choice + " (switched from native torch: new requests decode there)", flush=True)
    except Exception as error:  # noqa: BLE001 - whatever failed, the native engine keeps serving
        served.choice = f"engine: native torch (switching after the background export failed: {error})"
        return print(served.choice, flush=True)
    finally:
        served.switched.set()
    _retire(old)


def _retire(engine) -> None:
    """Close `engine` once its requests have ended (one that read it just before the switch is let in first)."""
    time.sleep(1.0)
    deadline = time.monotonic() + RETIRE_S
    while engine.in_use() and time.monotonic() < deadline:
        time.sleep(0.1)
    engine.close()
