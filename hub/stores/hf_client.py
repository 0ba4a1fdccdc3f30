"""Timeouts for every HTTP request ``HfStore`` makes, through huggingface_hub's own client hook.

huggingface_hub sends everything through one shared ``httpx2.Client`` built by a factory (``set_client_factory``); its
default client has no timeout, so an API call to a Hub that stalls waits as long as it stalls (only file downloads
get ``HF_HUB_DOWNLOAD_TIMEOUT``). Rather than replace the user's client, this module wraps whatever factory is in
place and adds one request hook: a request to an endpoint an ``HfStore`` registered gets that store's timeout
(connect, read, write and pool), any other request is left alone. The hook is re-attached if the client is rebuilt
(huggingface_hub closes it after a connection error) or the factory is replaced.

The only huggingface_hub internal read here is ``_GLOBAL_CLIENT_FACTORY`` (checked against 2.4), to wrap the
factory in place rather than replace it; without it the default factory is wrapped.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import httpx2
from huggingface_hub.utils import _http as hf_http
from huggingface_hub.utils import get_session, set_client_factory

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
    """Make sure huggingface_hub's shared client carries the timeout hook (cheap when it already does)."""
    if _apply_timeout in get_session().event_hooks.get("request", []):
        return
    with _LOCK:
        previous = getattr(hf_http, "_GLOBAL_CLIENT_FACTORY", hf_http.default_client_factory)

        def factory() -> httpx2.Client:
            client = previous()
            hooks = client.event_hooks
            if _apply_timeout not in hooks.get("request", []):
                client.event_hooks = {**hooks, "request": [*hooks.get("request", []), _apply_timeout]}
            return client

        set_client_factory(factory)
