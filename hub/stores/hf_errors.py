"""Turning huggingface_hub / httpx failures into hub's named errors, with the token scrubbed out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import HubError, NotFoundError, RemoteError


def status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) if isinstance(exc, HfHubHTTPError) else None


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: rate limits, server errors, timeouts and dropped connections."""
    status = status_of(exc)
    if status is not None:
        return status == 429 or status >= 500
    return isinstance(exc, httpx2.TransportError) and not isinstance(exc, httpx2.ProxyError)


def scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def translate(exc: BaseException, what: str, endpoint: str, token: str | None) -> HubError:
    """A named error for ``exc`` raised while doing ``what``."""
    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, RepositoryNotFoundError):
        message = f"{what}: repository not found at {endpoint} (or the token cannot read it)."
        return NotFoundError(scrub(message, token))
    if isinstance(exc, (RevisionNotFoundError, EntryNotFoundError)):
        return NotFoundError(scrub(f"{what}: not found at {endpoint}.", token))
    if isinstance(exc, OfflineModeIsEnabled):
        return RemoteError(f"{what}: offline mode is enabled (HF_HUB_OFFLINE) and nothing usable is cached.")
    if isinstance(exc, LocalEntryNotFoundError):
        return RemoteError(scrub(f"{what}: {endpoint} could not be reached and nothing usable is cached.", token))
    status = status_of(exc)
    if status is not None:
        detail = getattr(exc, "server_message", None) or ""
        message = f"{what}: {endpoint} answered HTTP {status}{': ' + detail if detail else ''}."
        if status in (401, 403):
            message += " Check that the token has write access."
        return RemoteError(scrub(message, token))
    if isinstance(exc, httpx2.TransportError):
        return RemoteError(scrub(f"{what}: could not reach {endpoint} ({type(exc).__name__}); retry later.", token))
    return RemoteError(scrub(f"{what}: {type(exc).__name__}: {exc}", token))


@contextmanager
def translated(what: str, endpoint: str, token: str | None) -> Iterator[None]:
    """Re-raise anything huggingface_hub or httpx raise as a named hub error."""
    try:
        yield
    except HubError:
        raise
    except (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError) as exc:
        raise translate(exc, what, endpoint, token) from None
