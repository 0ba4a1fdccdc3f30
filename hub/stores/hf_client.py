"""Timeouts for every HTTP request ``HfStore`` makes, through a request hook on huggingface_hub's shared client.

huggingface_hub sends everything through one shared ``httpx2.Client``: the one its public ``get_session()`` returns,
built by the factory set with ``set_client_factory``. Its default client has no timeout, so an API call to a Hub
that stalls waits as long as it stalls (only file downloads get ``HF_HUB_DOWNLOAD_TIMEOUT``). This module replaces
neither that client nor the factory (a user's own factory stays in place): :func:`ensure_installed` adds one request
hook to the live shared client when it lacks it. The hook gives a request to an endpoint an ``HfStore`` registered
that store's timeout (connect, read, write and pool) and leaves any other request alone.

Limit: huggingface_hub closes its shared client after a connection error (``close_session``, in ``http_backoff``)
and builds a new one from the factory on its next request. That client carries no hook until the next call of
:func:`ensure_installed`, which ``HfStore`` makes at the start of every attempt of every remote operation; requests
it sends in the rest of the current attempt get the factory's timeout (none with huggingface_hub's default).
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import httpx2
from huggingface_hub.utils import get_session

_LOCK = threading.Lock()
_TIMEOUTS: dict[tuple[str, str, int | None], float] = {}


def _origin(url: str | httpx2.URL) -> tuple[str, str, int | None]:
    parts = urlsplit(str(url))
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _apply_timeout(request: httpx2.Request) -> None:
    timeout = _TIMEOUTS.get(_origin(request.url))
    if timeout is not None:
        request.extensions["timeout"] = httpx2.Timeout(timeout).as_dict()


def register(endpoint: str, timeout_s: float) -> None:
    """Give every request to ``endpoint`` a timeout of ``timeout_s`` (the last registration for a host wins)."""
    with _LOCK:
        _TIMEOUTS[_origin(endpoint)] = timeout_s


def ensure_installed() -> None:
    """Add the timeout hook to huggingface_hub's live shared client if it lacks it (cheap when it has it)."""
    client = get_session()
    if _apply_timeout in client.event_hooks.get("request", []):
        return
    with _LOCK:
        hooks = client.event_hooks
        if _apply_timeout not in hooks.get("request", []):  # (another thread may have added it meanwhile)
            client.event_hooks = {**hooks, "request": [*hooks.get("request", []), _apply_timeout]}
