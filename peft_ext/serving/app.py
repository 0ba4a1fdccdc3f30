"""The OpenAI-compatible HTTP layer over :class:`~peft_ext.serving.openai_serving.OpenAIServing` (FastAPI).

``POST /v1/completions`` and ``POST /v1/chat/completions`` (whole answers, or server-sent events ending with
``data: [DONE]`` for ``stream: true``), ``GET /v1/models``, vLLM's ``POST /tokenize``, ``POST /detokenize`` and
``GET /tokenizer_info`` (what lm-evaluation-harness's remote tokenizer asks), ``GET``/``HEAD /health`` and
``GET /metrics``. Each route
is a few lines over the serving object; this module only validates bodies (:mod:`.openai_schema`), writes replies
out, watches for clients that hang up, and shapes errors as OpenAI does (:mod:`.http_errors`). With an API key every
route but ``/health`` needs it; the interactive docs (``/docs``, ``/openapi.json``) are off unless asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..errors import AuthenticationError, InvalidConfigError, PeftExtError, RequestTooLargeError
from . import openai_schema as schema
from .http_errors import RETRY_AFTER_S, error_body, http_error, public_message
from .metrics import ServingMetrics
from .openai_serving import OpenAIServing, Reply
from .service import Service

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_REQUEST_BYTES = 1 << 20
DEFAULT_MAX_TOKENS_LIMIT = 4096
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_OPEN_PATHS = {"/health"}  # answered without the API key: load balancers probe it
_CLIENT_GONE = 499  # nginx's "client closed request": the status of an answer nobody reads, for the access log


def create_app(
    service: Service,
    api_key: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    docs: bool = False,
) -> FastAPI:
    """The app serving ``service``. With ``api_key``, every route but ``/health`` needs ``Authorization: Bearer
    <key>``; bodies over ``max_request_bytes`` are refused (413), and so is a ``max_tokens`` over
    ``max_tokens_limit`` (400; it also caps a chat request that gives none). ``docs`` serves ``/docs`` and
    ``/openapi.json`` (behind the key when there is one)."""
    if api_key is not None and (not api_key.strip() or api_key != api_key.strip()):
        raise InvalidConfigError(
            "The API key is empty or has whitespace around it (a newline from a file?): give the key alone, or "
            "none to serve without one."
        )
    app = FastAPI(
        title="peft-ext",
        summary="Soft prompts on one frozen base model, OpenAI-compatible.",
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    metrics = ServingMetrics(service)
    serving = OpenAIServing(service, metrics, max_tokens_limit)
    app.state.service, app.state.metrics, app.state.serving = service, metrics, serving
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> Response:
        reason = service.health()
        if reason is None:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable", "reason": public_message(reason)}, status_code=503)

    app.head("/health", include_in_schema=False)(health)  # what load balancers and curl -I send

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return serving.models().model_dump(mode="json")

    @app.post("/v1/completions")
    async def completions(body: schema.CompletionRequest, request: Request) -> Response:
        return await _respond(request, await serving.completions(body))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: schema.ChatCompletionRequest, request: Request) -> Response:
        return await _respond(request, await serving.chat(body))

    @app.post("/tokenize")
    async def tokenize(body: schema.TokenizeRequest) -> dict[str, Any]:
        return (await serving.tokenize(body)).model_dump(mode="json")

    @app.post("/detokenize")
    async def detokenize(body: schema.DetokenizeRequest) -> dict[str, Any]:
        return (await serving.detokenize(body)).model_dump(mode="json")

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        return serving.tokenizer_info()

    app.add_middleware(_Guard, api_key=api_key, max_bytes=max_request_bytes)
    return app


async def _respond(request: Request, reply: Reply) -> Response:
    """Write a reply out: events as they come, or the whole answer unless the client hangs up first."""
    if reply.stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(reply.events(), media_type="text/event-stream", headers=headers)
    whole = await _unless_disconnected(request, reply.whole(), reply)
    if whole is None:
        return Response(status_code=_CLIENT_GONE)
    return JSONResponse(whole.model_dump(mode="json"))


async def _unless_disconnected(request: Request, work: Awaitable[T], reply: Reply) -> T | None:
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
            reply.run.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


# --- errors ---------------------------------------------------------------------------------------------------------


def _error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _named_error(error: BaseException) -> JSONResponse:
    mapped = http_error(error)
    if mapped.status >= 500 and mapped.code is None:
        logger.error("Request failed", exc_info=error)
        message = "The server failed on this request (see its log)."
    else:
        message = public_message(str(error))
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
    """ASGI middleware before the app: the API key (every path but ``/health``) and the body-size limit, both checked
    before a
    body is parsed. The body is read here (at most ``max_bytes``) and handed on unchanged."""

    def __init__(self, app: Any, api_key: str | None, max_bytes: int) -> None:
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key is not None and scope["path"] not in _OPEN_PATHS and not self._authorized(scope):
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
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        expected = str(self.api_key).encode()
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), expected)

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
