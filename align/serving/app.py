"""The FastAPI app of `python -m align.run serve`: OpenAI's chat-completions API over align's models.

    GET  /v1/models               the served models: id, stage, status and gate verdict of each
    GET  /v1/models/{id}
    POST /v1/chat/completions     messages, temperature, top_p, max_tokens, stop, seed, n, stream (SSE chunks
                                  ending with `data: [DONE]`; stream_options.include_usage adds a usage chunk)
    POST /v1/feedback             {"completion_id", "choice", "rating": "up"|"down"} or {..., "preferred": <index
                                  of another choice, or a text>}: into the run's label store, as the chat app's
    GET  /health, GET /metrics    liveness, and Prometheus text (align.serving.metrics)

Errors are OpenAI-shaped (align.serving.protocol). Completions are kept for feedback where the recipe's
`serve.keep_completions` says (align.serving.feedback: the label store, or memory only); prompts and replies are
appended to a log file only with `serve.log_requests`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from align.serving import protocol
from align.serving.access import Access
from align.serving.engine import GenerationRequest
from align.serving.feedback import Kept, RememberedCompletions, record_feedback
from align.serving.metrics import Metrics
from align.serving.protocol import ApiError


@dataclass
class ServedModel:
    """A model the API offers: `chat_model` (ui.chat.ChatModel), loaded and given an engine (`engine_name`:
transformers or vllm) on first use."""

    id: str
    chat_model: object
    max_batch: int = 32
    engine_name: str = "transformers"
    on_step: object = None
    _engine: object = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def card(self) -> dict:
        manifest = self.chat_model.manifest or {}
        gate = manifest.get("gate") or {}
        return {"id": self.id, "object": "model", "created": protocol.now(), "owned_by": "align",
                "stage": manifest.get("stage"), "status": manifest.get("status"),
                "gate": gate.get("verdict"), "gate_override": gate.get("override"),
                "gate_summary": self.chat_model.verdict, "source": self.chat_model.name}

    def engine(self):
        """The model's engine (align.serving.engine's interface: encode, submit, context_length, close)."""
        with self._lock:
            if self._engine is None:
                if self.engine_name == "vllm":
                    from align.serving.vllm_engine import VllmEngine

                    self._engine = VllmEngine.for_model(self.chat_model, max_batch=self.max_batch,
                                                        on_step=self.on_step)
                else:
                    from align.serving.engine import TransformersEngine

                    self.chat_model.load()
                    self._engine = TransformersEngine(self.chat_model.model, self.chat_model.tokenizer,
                                                      max_batch=self.max_batch, on_step=self.on_step)
            return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


@dataclass
class Limits:
    max_request_bytes: int = 1 << 20
    max_tokens: int = 1024  # the most a request may ask for
    default_max_tokens: int = 256  # when it asks for none


class Service:
    """Everything the routes share."""

    def __init__(self, models: dict[str, ServedModel], *, store=None, access: Access | None = None,
                 output_filter=None, limits: Limits = Limits(), log_requests: str | Path | None = None,
                 metrics: Metrics | None = None, completions: RememberedCompletions | None = None):
        self.models, self.store, self.access = models, store, access or Access()
        self.filter, self.limits, self.metrics = output_filter, limits, metrics or Metrics()
        self.log_path = Path(log_requests) if log_requests else None
        self.completions = completions or RememberedCompletions()  # kept for feedback
        self._log_lock = threading.Lock()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for model in models.values():
            model.on_step = self.metrics.engine_step

    def log(self, record: dict) -> None:
        if self.log_path is None:
            return
        with self._log_lock, self.log_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        for model in self.models.values():
            model.close()


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes, over this server's limit of {limit}",
                       code="request_too_large")
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, f"the request body is over this server's limit of {limit} bytes", code="request_too_large")
    return body


def _model(service: Service, name: str) -> ServedModel:
    served = service.models.get(name)
    if served is None:
        raise ApiError(404, f"The model '{name}' does not exist; this server has: {', '.join(service.models)}",
                       param="model", code="model_not_found")
    return served


def _generation(service: Service, served: ServedModel, engine, body: protocol.ChatCompletionRequest):
    """The engine request for `body`, its events queue, and the prompt's token count (ApiError when too long)."""
    limit = body.token_limit() or service.limits.default_max_tokens
    if limit > service.limits.max_tokens:
        raise ApiError(400, f"max_tokens is {limit}, over this server's limit of {service.limits.max_tokens}",
                       param="max_tokens", code="invalid_value")
    messages = [m.model_dump() for m in body.messages]
    prompt_ids = engine.encode(messages)
    context = engine.context_length
    if context and len(prompt_ids) + limit > context:
        raise ApiError(400, f"This model's maximum context length is {context} tokens; the messages take "
                            f"{len(prompt_ids)} and max_tokens asks for {limit} more", param="messages",
                       code="context_length_exceeded")
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    request = GenerationRequest(prompt_ids, lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
                                n=body.n, max_tokens=limit, temperature=body.temperature, top_p=body.top_p,
                                stop=body.stop, seed=body.seed)
    return request, events, messages


class Completion:
    """One completion's events as they come (`run`), its choices filtered when finished, and its bookkeeping."""

    def __init__(self, service: Service, served: ServedModel, request: GenerationRequest, events: asyncio.Queue,
                 messages: list[dict], caller: str, keyed: bool = False):
        self.service, self.served, self.request, self.events = service, served, request, events
        self.messages, self.caller = messages, caller
        self.owner = caller if keyed else None  # only this key's holder may give feedback on it
        self.id, self.created = protocol.completion_id(), protocol.now()
        n = request.n
        self.texts, self.finish, self.tokens, self.extra = [""] * n, [None] * n, [0] * n, [{} for _ in range(n)]
        self.withheld = [False] * n
        self.first_text_at: float | None = None

    async def run(self):
        """Yields ("text", choice, delta) as it may be shown, ("done", choice) when a choice ends."""
        left = self.request.n
        held = self.service.filter is not None
        while left:
            event = await self.events.get()
            if event[0] == "error":
                raise ApiError(500, f"generation failed: {event[1]}", type="server_error", code="engine_error")
            kind, choice = event[0], event[1]
            if kind == "text":
                if self.first_text_at is None:
                    self.first_text_at = time.perf_counter()
                self.texts[choice] += event[2]
                if not held:
                    yield "text", choice, event[2]
                continue
            self.finish[choice], self.tokens[choice] = event[2], event[3]
            left -= 1
            if held:
                verdict = await run_in_threadpool(self.service.filter.check, self.texts[choice],
                                                  where=f"{self.id} choice {choice}")
                self.extra[choice] = verdict.extra()
                if verdict.filtered:
                    self.service.metrics.filtered_reply(verdict.action)
                    if verdict.action == "refuse":
                        self.withheld[choice] = True
                        self.finish[choice] = "content_filter"
                        self.texts[choice] = verdict.content
                yield "text", choice, self.texts[choice]
            yield "done", choice
        await run_in_threadpool(self._finished)

    def _finished(self) -> None:
        service = self.service
        latency = time.perf_counter() - self.request.submitted_at
        first = None if self.first_text_at is None else self.first_text_at - self.request.submitted_at
        service.metrics.completion(len(self.request.prompt_ids), sum(self.tokens), latency, first)
        service.completions.keep(self.id, Kept(self.served.chat_model.name, self.messages, list(self.texts),
                                               list(self.withheld), owner=self.owner))
        service.log({"id": self.id, "model": self.served.id, "caller": self.caller, "messages": self.messages,
                     "replies": self.texts, "finish_reasons": self.finish})

    def choices(self) -> list[dict]:
        return [{"index": i, "content": t, "finish_reason": f, "extra": x}
                for i, (t, f, x) in enumerate(zip(self.texts, self.finish, self.extra))]


def build_app(service: Service) -> FastAPI:
    app = FastAPI(title="align serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        return JSONResponse(ApiError(error.status_code, str(error.detail)).body(), status_code=error.status_code)

    @app.middleware("http")
    async def _count(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        service.metrics.request(getattr(route, "path", "other"), response.status_code)
        return response

    def caller(request: Request) -> tuple[str, bool]:
        return service.access.caller(request.headers.get("authorization"), request.client.host if request.client
                                     else "unknown")

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(service.models)}

    @app.get("/metrics")
    async def metrics(request: Request):
        if service.access.keys is not None:
            caller(request)
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models(request: Request):
        caller(request)
        return {"object": "list", "data": [m.card() for m in service.models.values()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request):
        caller(request)
        return _model(service, model_id).card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        name, keyed = caller(request)
        raw = await _body(request, service.limits.max_request_bytes)
        body = protocol.parse_body(raw, protocol.ChatCompletionRequest)
        served = _model(service, body.model)
        engine = await run_in_threadpool(served.engine)
        generation, events, messages = _generation(service, served, engine, body)
        completion = Completion(service, served, generation, events, messages, name, keyed)
        engine.submit(generation)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_stream(completion, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            async for _ in completion.run():
                pass
        finally:
            generation.cancelled = True  # a client gone mid-way frees its rows; a finished request has none left
        return protocol.completion_body(completion.id, served.id, completion.created, completion.choices(),
                                        len(generation.prompt_ids), sum(completion.tokens))

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        name, keyed = caller(request)
        raw = await _body(request, service.limits.max_request_bytes)
        body = protocol.parse_body(raw, protocol.FeedbackRequest)
        if service.store is None:
            raise ApiError(400, "this server keeps no label store, so it takes no feedback", code="no_store")
        row = await run_in_threadpool(record_feedback, service.store, service.completions, body, name,
                                      "login" if keyed else "none")
        return {"id": row, "object": "feedback", "completion_id": body.completion_id, "choice": body.choice}

    return app


async def _stream(completion: Completion, include_usage: bool):
    cid, model, created = completion.id, completion.served.id, completion.created
    try:
        for i in range(completion.request.n):
            yield protocol.chunk(cid, model, created, i, {"role": "assistant", "content": ""})
        async for event in completion.run():
            if event[0] == "text":
                yield protocol.chunk(cid, model, created, event[1], {"content": event[2]})
            else:
                i = event[1]
                yield protocol.chunk(cid, model, created, i, {}, completion.finish[i], **completion.extra[i])
        if include_usage:
            yield protocol.usage_chunk(cid, model, created, len(completion.request.prompt_ids), sum(completion.tokens))
        yield protocol.DONE
    except ApiError as error:
        yield f"data: {json.dumps(error.body())}\n\n"
    finally:
        completion.request.cancelled = True

