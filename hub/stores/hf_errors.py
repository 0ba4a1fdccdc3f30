"""Turning huggingface_hub / httpx failures into hub's named errors, with secrets scrubbed out.

One place decides what a failure is (:func:`classify` walks the exception and its causes, since huggingface_hub
wraps transport errors in ``LocalEntryNotFoundError`` or ``RevisionResolutionError``), whether it is worth retrying
(:func:`is_transient`), and what the user reads (:func:`translate`). Every message goes through :func:`scrub`, which
removes the store's token, any credentials in a URL, ``Bearer ...`` values and anything shaped like a Hub token,
whatever a server echoes back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)

from ..errors import HubError, NotFoundError, RemoteError, RemoteTimeoutError

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")
_BEARER = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=:-]+")
_HUB_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{16,}")
# What huggingface_hub raises for a remote failure, directly or wrapped (KeyError/TypeError: an answer missing
# fields it expects): translated, never let through.
REMOTE_ERRORS = (
    HfHubHTTPError,
    httpx2.HTTPError,
    RevisionResolutionError,
    EntryNotFoundError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
)


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` without the given secrets, URL credentials, authorization values or Hub-token-shaped strings."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    text = _BEARER.sub(r"\1\2***", text)
    return _HUB_TOKEN.sub("hf_***", text)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of the first HTTP error in ``exc``'s chain."""
    for item in _chain(exc):
        if isinstance(item, HfHubHTTPError):
            return getattr(getattr(item, "response", None), "status_code", None)
    return None


def _transport(exc: BaseException) -> httpx2.TransportError | None:
    for item in _chain(exc):
        if isinstance(item, httpx2.TransportError) and not isinstance(item, httpx2.ProxyError):
            return item
    return None


def is_offline(exc: BaseException) -> bool:
    return any(isinstance(item, OfflineModeIsEnabled) for item in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: rate limits, server errors, timeouts, dropped or refused connections, truncated bodies."""
    if is_offline(exc):
        return False
    status = status_of(exc)
    if status is not None:
        return status in (408, 429) or status >= 500
    if _transport(exc) is not None:
        return True
    # huggingface_hub's own check of a download's length ("Consistency check failed"): a truncated body.
    return any(isinstance(item, OSError) and "Consistency check failed" in str(item) for item in _chain(exc))


def translate(exc: BaseException, what: str, endpoint: str, *secrets: str | None) -> HubError:
    """A named error for ``exc`` raised while doing ``what`` (``endpoint`` must already be free of credentials)."""
    if isinstance(exc, HubError):
        return exc
    message = _message(exc, what, endpoint)
    kind: type[HubError] = RemoteError
    if any(isinstance(i, (RepositoryNotFoundError, RevisionNotFoundError)) for i in _chain(exc)):
        kind = NotFoundError
    elif status_of(exc) == 404:
        kind = NotFoundError
    elif isinstance(_transport(exc), httpx2.TimeoutException):
        kind = RemoteTimeoutError
    return kind(scrub(message, *secrets))


def _message(exc: BaseException, what: str, endpoint: str) -> str:
    if any(isinstance(i, RepositoryNotFoundError) for i in _chain(exc)):
        return f"{what}: repository not found at {endpoint} (or the token cannot read it)."
    if any(isinstance(i, RevisionNotFoundError) for i in _chain(exc)) or status_of(exc) == 404:
        return f"{what}: not found at {endpoint}."
    if is_offline(exc):
        return f"{what}: offline mode is enabled (HF_HUB_OFFLINE) and nothing usable is cached; unset HF_HUB_OFFLINE."
    status = status_of(exc)
    if status is not None:
        http = next(i for i in _chain(exc) if isinstance(i, HfHubHTTPError))
        detail = (getattr(http, "server_message", None) or "").strip().replace("\n", " ")[:300]
        message = f"{what}: {endpoint} answered HTTP {status}{': ' + detail if detail else ''}."
        if status in (401, 403):
            message += " Check the token (HF_TOKEN) and that it has access to the repo."
        elif status >= 500 or status == 429:
            message += " The Hub is having trouble; retry later."
        return message
    transport = _transport(exc)
    if isinstance(transport, httpx2.TimeoutException):
        return (
            f"{what}: {endpoint} did not answer in time ({type(transport).__name__}); retry later or raise timeout_s."
        )
    if transport is not None:
        return f"{what}: could not reach {endpoint} ({type(transport).__name__}); check the endpoint or retry later."
    if isinstance(exc, EntryNotFoundError):
        return f"{what}: a file is missing at {endpoint} and nothing usable is cached."
    if isinstance(exc, RevisionResolutionError):
        return f"{what}: {endpoint} could not be reached and the version is not cached; retry when it is reachable."
    detail = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{what}: {type(exc).__name__}{': ' + detail if detail else ''}"


@contextmanager
def translated(what: str, endpoint: str, *secrets: str | None) -> Iterator[None]:
    """Re-raise anything huggingface_hub or httpx raise as a named hub error."""
    try:
        yield
    except HubError:
        raise
    except REMOTE_ERRORS as exc:
        raise translate(exc, what, endpoint, *secrets) from None
