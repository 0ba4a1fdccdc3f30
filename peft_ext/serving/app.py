"""The OpenAI-compatible HTTP layer over a :class:`~peft_ext.serving.service.Service` (FastAPI).

``POST /v1/completions`` and ``POST /v1/chat/completions`` (whole answers, or server-sent events ending with
``data: [DONE]`` for ``stream: true``), ``GET /v1/models``, ``GET /health`` and ``GET /metrics``. The layer is thin:
it validates bodies (:mod:`.openai_schema`), asks the service, and shapes answers and errors as OpenAI does
(:mod:`.http_errors`). A client that goes away cancels its generations; no bad request takes the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import AuthenticationError, PeftExtError, RequestTooLargeError
from . import openai_schema as schema
from .http_errors import RETRY_AFTER_S, error_body, http_error
from .metrics import ServingMetrics
from .sampling import SamplingParams, Token
from .service import Piece, Run, Service, Target

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_REQUEST_BYTES = 1 << 20
DEFAULT_MAX_TOKENS_LIMIT = 4096
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_CLIENT_GONE = 499  # nginx's "client closed request": the status of an answer nobody reads, for the access log


def create_app(
    service: Service,
    api_key: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
) -> FastAPI:
    """The app serving ``service``. With ``api_key``, every ``/v1`` request needs ``Authorization: Bearer <key>``
    (``/health`` and ``/metrics`` stay open); bodies over ``max_request_bytes`` are refused (413), and so is a
    ``max_tokens`` over ``max_tokens_limit`` (400; it also caps a chat request that gives none)."""
    app = FastAPI(title="peft-ext", summary="Soft prompts on one frozen base model, OpenAI-compatible.")
    metrics = ServingMetrics(service)
    app.state.service, app.state.metrics = service, metrics
    started = int(time.time())
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        if service.healthy():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable"}, status_code=503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        base = service.base_name
        cards = [
            schema.ModelCard(
                id=card.id,
                created=started,
                root=base,
                parent=None if card.kind == "base" else base,
                version=card.version,
            )
            for card in service.registry.cards()
        ]
        return schema.ModelList(data=cards).model_dump(mode="json")

    @app.post("/v1/completions")
    async def completions(body: schema.CompletionRequest, request: Request) -> Response:
        body.refuse_unsupported()

        def prepare() -> tuple[Target, list[list[int]]]:
            target = service.lookup(body.model)
            return target, _completion_inputs(service, body.prompt)

        target, inputs = await run_in_threadpool(prepare)
        params = _params(body, service.max_tokens(target, inputs, body.max_tokens, max_tokens_limit), body.logprobs)
        run = service.start(target, inputs, params, n=body.n, stop=body.stop_strings(), loop=asyncio.get_running_loop())
        metrics.request(target.name)
        meta = _meta("cmpl", target.name)
        with_logprobs = body.logprobs is not None
        if body.stream:
            return _event_stream(_completion_events(service, run, meta, with_logprobs, body.include_usage()))
        choices = await _unless_disconnected(request, run.choices(), run)
        if choices is None:
            return Response(status_code=_CLIENT_GONE)
        response = schema.CompletionResponse(
            **meta,
            choices=[
                schema.CompletionChoice(
                    index=c.index,
                    text=c.text,
                    logprobs=_completion_logprobs(service, c.tokens, c.offsets) if with_logprobs else None,
                    finish_reason=c.finish_reason,
                )
                for c in choices
            ],
            usage=_usage(run),
        )
        return JSONResponse(response.model_dump(mode="json"))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: schema.ChatCompletionRequest, request: Request) -> Response:
        body.refuse_unsupported()

        def prepare() -> tuple[Target, list[list[int]]]:
            target = service.lookup(body.model)
            return target, [service.encode_chat([m.as_template_input() for m in body.messages])]

        target, inputs = await run_in_threadpool(prepare)
        top = (body.top_logprobs or 0) if body.logprobs else None
        max_tokens = service.max_tokens(target, inputs, body.requested_max_tokens(), max_tokens_limit)
        params = _params(body, max_tokens, top)
        run = service.start(target, inputs, params, n=body.n, stop=body.stop_strings(), loop=asyncio.get_running_loop())
        metrics.request(target.name)
        meta = _meta("chatcmpl", target.name)
        if body.stream:
            return _event_stream(_chat_events(service, run, meta, body.logprobs, body.include_usage()))
        choices = await _unless_disconnected(request, run.choices(), run)
        if choices is None:
            return Response(status_code=_CLIENT_GONE)
        response = schema.ChatCompletionResponse(
            **meta,
            choices=[
                schema.ChatChoice(
                    index=c.index,
                    message=schema.AssistantMessage(content=c.text),
                    logprobs=_chat_logprobs(service, c.tokens) if body.logprobs else None,
                    finish_reason=c.finish_reason,
                )
                for c in choices
            ],
            usage=_usage(run),
        )
        return JSONResponse(response.model_dump(mode="json"))

    app.add_middleware(_Guard, api_key=api_key, max_bytes=max_request_bytes)
    return app


# --- requests -------------------------------------------------------------------------------------------------------


def _completion_inputs(service: Service, prompt: Any) -> list[list[int]]:
    """OpenAI's ``prompt``: a text, texts, token ids, or lists of token ids."""
    if isinstance(prompt, str):
        return [service.encode_text(prompt)]
    if all(isinstance(item, str) for item in prompt):
        return [service.encode_text(text) for text in prompt]
    if all(isinstance(item, int) for item in prompt):
        return [service.token_ids(prompt)]
    return [service.token_ids(ids) for ids in prompt]


def _params(
    body: schema.CompletionRequest | schema.ChatCompletionRequest, max_tokens: int, logprobs: int | None
) -> Any:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        logprobs=logprobs,
    )


async def _unless_disconnected(request: Request, work: Awaitable[T], run: Run) -> T | None:
    """``work``'s result, or None when the client hangs up first (then its generations are cancelled)."""
    task = asyncio.ensure_future(work)

    async def hang_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(hang_up())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            run.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


# --- responses ------------------------------------------------------------------------------------------------------


def _meta(kind: str, model: str) -> dict[str, Any]:
    """What every response and chunk of one request carries."""
    return {"id": f"{kind}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}


def _usage(run: Run) -> schema.Usage:
    completion = run.completion_tokens
    return schema.Usage(
        prompt_tokens=run.prompt_tokens, completion_tokens=completion, total_tokens=run.prompt_tokens + completion
    )


def _event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _event(payload: BaseModel | dict[str, Any]) -> str:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


async def _events(
    run: Run, shape: Callable[[Piece], list[BaseModel]], final: Callable[[schema.Usage], BaseModel] | None
) -> AsyncIterator[str]:
    """Server-sent events of a run's pieces; an error after the headers went out becomes an error event."""
    try:
        async for piece in run.pieces():
            for chunk in shape(piece):
                yield _event(chunk)
        if final is not None:
            yield _event(final(_usage(run)))
    except PeftExtError as error:
        mapped = http_error(error)
        yield _event(error_body(str(error), mapped.type, mapped.param, mapped.code))
    yield "data: [DONE]\n\n"


def _completion_events(
    service: Service, run: Run, meta: dict[str, Any], with_logprobs: bool, include_usage: bool
) -> AsyncIterator[str]:
    offsets = [0] * len(run.generations)

    def shape(piece: Piece) -> list[BaseModel]:
        logprobs = None
        if with_logprobs:
            logprobs = _completion_logprobs(service, piece.tokens, [offsets[piece.index]] * len(piece.tokens))
        offsets[piece.index] += len(piece.text)
        choice = schema.CompletionChoice(
            index=piece.index, text=piece.text, logprobs=logprobs, finish_reason=piece.finish_reason
        )
        return [schema.CompletionResponse(**meta, choices=[choice])]

    def final(usage: schema.Usage) -> BaseModel:
        return schema.CompletionResponse(**meta, choices=[], usage=usage)

    return _events(run, shape, final if include_usage else None)


def _chat_events(
    service: Service, run: Run, meta: dict[str, Any], with_logprobs: bool, include_usage: bool
) -> AsyncIterator[str]:
    greeted: set[int] = set()

    def shape(piece: Piece) -> list[BaseModel]:
        chunks: list[BaseModel] = []
        if piece.index not in greeted:  # OpenAI's first chunk of a choice names the role
            greeted.add(piece.index)
            first = schema.ChatChunkChoice(index=piece.index, delta=schema.Delta(role="assistant", content=""))
            chunks.append(schema.ChatCompletionChunk(**meta, choices=[first]))
        choice = schema.ChatChunkChoice(
            index=piece.index,
            delta=schema.Delta(content=piece.text or None),
            logprobs=_chat_logprobs(service, piece.tokens) if with_logprobs else None,
            finish_reason=piece.finish_reason,
        )
        chunks.append(schema.ChatCompletionChunk(**meta, choices=[choice]))
        return chunks

    def final(usage: schema.Usage) -> BaseModel:
        return schema.ChatCompletionChunk(**meta, choices=[], usage=usage)

    return _events(run, shape, final if include_usage else None)


def _completion_logprobs(
    service: Service, tokens: Sequence[Token], offsets: Sequence[int]
) -> schema.CompletionLogprobs:
    """The legacy completions ``logprobs`` object. A token's offset is where the text that came out with it starts
    in the choice's text (tokens whose text was held back together share one)."""
    return schema.CompletionLogprobs(
        tokens=[service.token_text(t.id) for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[{service.token_text(i): lp for i, lp in t.top_logprobs} for t in tokens],
        text_offset=list(offsets),
    )


def _chat_logprobs(service: Service, tokens: Sequence[Token]) -> schema.ChatLogprobs:
    def entry(token_id: int, logprob: float) -> schema.TopLogprob:
        text = service.token_text(token_id)
        return schema.TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

    return schema.ChatLogprobs(
        content=[
            schema.TokenLogprob(
                **entry(t.id, t.logprob).model_dump(), top_logprobs=[entry(i, lp) for i, lp in t.top_logprobs]
            )
            for t in tokens
        ]
    )


# --- errors ---------------------------------------------------------------------------------------------------------


def _error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _named_error(error: BaseException) -> JSONResponse:
    mapped = http_error(error)
    if mapped.status >= 500 and mapped.code is None:
        logger.error("Request failed", exc_info=error)
        message = "The server failed on this request (see its log)."
    else:
        message = str(error)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if mapped.status in (429, 503) else None
    if mapped.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return _error_response(mapped.status, error_body(message, mapped.type, mapped.param, mapped.code), headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def validation(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        problems = list(error.errors())
        first = problems[0] if problems else {}
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            reason = (first.get("ctx") or {}).get("error", "not JSON")
            message, param = f"The request body is not valid JSON: {reason}.", None
        else:
            param = ".".join(where) or None
            message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
            if len(problems) > 1:
                message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
        return _error_response(400, error_body(message, "invalid_request_error", param, "invalid_value"))

    async def http(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        body = error_body(str(error.detail), "invalid_request_error", None, code)
        return _error_response(error.status_code, body, dict(error.headers or {}) or None)

    async def named(request: Request, error: Exception) -> Response:
        return _named_error(error)

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(PeftExtError, named)
    app.add_exception_handler(Exception, named)


class _Guard:
    """ASGI middleware before the app: the API key (``/v1`` paths) and the body-size limit, both checked before a
    body is parsed. The body is read here (at most ``max_bytes``) and handed on unchanged."""

    def __init__(self, app: Any, api_key: str | None, max_bytes: int) -> None:
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key is not None and scope["path"].startswith("/v1") and not self._authorized(scope):
            error = AuthenticationError("Missing or wrong API key: send the header 'Authorization: Bearer <key>'.")
            return await _named_error(error)(scope, receive, send)
        if scope["method"] in _BODY_METHODS:
            body = await self._read_body(scope, receive)
            if body is None:
                return None  # the client went away while sending
            if isinstance(body, RequestTooLargeError):
                return await _named_error(body)(scope, receive, send)
            receive = _replay(body, receive)
        return await self.app(scope, receive, send)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        expected = f"Bearer {self.api_key}".encode()
        return hmac.compare_digest(given, expected)

    async def _read_body(self, scope: dict[str, Any], receive: Any) -> bytes | RequestTooLargeError | None:
        too_large = RequestTooLargeError(f"The request body is over this server's limit of {self.max_bytes} bytes.")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
