"""Named errors -> HTTP statuses and OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``.

The one place that decides what a failure means to a client. The most specific class listed first wins; a
:class:`~peft_ext.errors.PeftExtError` not listed is a server fault (500), so a new error reachable from user input
needs a line here (the tests send every kind of bad input and accept no 500).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hub.errors import (
    BaseModelMismatchError,
    IntegrityError,
    InvalidConstraintError,
    InvalidNameError,
    InvalidVersionError,
    NotFoundError,
    RemoteError,
    RemoteTimeoutError,
)

from ..errors import (
    AdapterNotFoundError,
    AuthenticationError,
    ContextLengthError,
    GenerationError,
    InvalidAdapterError,
    InvalidModelNameError,
    InvalidRequestError,
    RequestTooLargeError,
    RequestTooLargeForServerError,
    ServerBusyError,
    ServerStoppingError,
    UnsupportedParameterError,
)

RETRY_AFTER_S = 1  # what a 429 (queue full) or 503 tells a client to wait before retrying


@dataclass(frozen=True)
class HTTPError:
    status: int
    type: str
    code: str | None
    param: str | None = None


_TABLE: list[tuple[type[BaseException], HTTPError]] = [
    (AuthenticationError, HTTPError(401, "authentication_error", "invalid_api_key")),
    (RequestTooLargeError, HTTPError(413, "invalid_request_error", "request_too_large")),
    (ServerBusyError, HTTPError(429, "rate_limit_error", "server_busy")),
    (ServerStoppingError, HTTPError(503, "service_unavailable_error", "server_shutting_down")),
    (GenerationError, HTTPError(500, "server_error", "generation_failed")),
    (ContextLengthError, HTTPError(400, "invalid_request_error", "context_length_exceeded")),
    (UnsupportedParameterError, HTTPError(400, "invalid_request_error", "unsupported_parameter")),
    # A model that is not served, or a store reference to nothing: OpenAI's 404 for an unknown model.
    (AdapterNotFoundError, HTTPError(404, "invalid_request_error", "model_not_found", "model")),
    (NotFoundError, HTTPError(404, "invalid_request_error", "model_not_found", "model")),
    # A store reference for another base model, or one that cannot be used on this one.
    (BaseModelMismatchError, HTTPError(400, "invalid_request_error", "base_model_mismatch", "model")),
    (InvalidAdapterError, HTTPError(400, "invalid_request_error", "invalid_prompt", "model")),
    (InvalidNameError, HTTPError(400, "invalid_request_error", "invalid_model_reference", "model")),
    (InvalidModelNameError, HTTPError(400, "invalid_request_error", "invalid_model_reference", "model")),
    (RequestTooLargeForServerError, HTTPError(400, "invalid_request_error", "request_over_server_capacity")),
    (InvalidConstraintError, HTTPError(400, "invalid_request_error", "invalid_model_reference", "model")),
    (InvalidVersionError, HTTPError(400, "invalid_request_error", "invalid_model_reference", "model")),
    # The store behind a reference is damaged or unreachable: a gateway failure, not the client's.
    (RemoteTimeoutError, HTTPError(504, "server_error", "store_timeout")),
    (RemoteError, HTTPError(502, "server_error", "store_unavailable")),
    (IntegrityError, HTTPError(502, "server_error", "store_integrity")),
    (InvalidRequestError, HTTPError(400, "invalid_request_error", None)),
]
_SERVER_FAULT = HTTPError(500, "server_error", None)


def http_error(error: BaseException) -> HTTPError:
    """The status, type and code of an error (500 for anything not known to be the client's)."""
    for kind, mapped in _TABLE:
        if isinstance(error, kind):
            return mapped
    return _SERVER_FAULT


# An absolute path's folders: what a message must not tell a client about the server's disk (a URL's slashes follow a
# ':' or a word character, so they are left alone).
_FOLDERS = re.compile(r"(?<![\w:/.~])/[^\s'\"]*/(?=[^\s'\"/])")


def public_message(message: str) -> str:
    """``message`` as a client may read it: every absolute path cut to its last part (``/srv/store/org`` -> ``org``)."""
    return _FOLDERS.sub("", message)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
