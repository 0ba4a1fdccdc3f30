"""The store's timeout rides on huggingface_hub's live shared client, whatever client factory is in place.

A stalled answer (the proxy sleeps 3 s, then answers normally) must end in :class:`RemoteTimeoutError` after the
store's 1 s timeout; without the hook the request would wait and succeed, and no error would be raised.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fault_proxy import FaultProxy, ProxyFault
from hub_testutils import REPO, TOKEN
from huggingface_hub.utils import close_session, get_session, set_client_factory

import hub
from hub import HfStore
from hub.errors import RemoteTimeoutError
from hub.stores import hf_client


def _store(fault_proxy: FaultProxy, tmp_path: Path, attempts: int) -> HfStore:
    return HfStore(
        endpoint=fault_proxy.url,
        token=TOKEN,
        cache_dir=tmp_path / "c",
        attempts=attempts,
        retry_wait_s=0.01,
        timeout_s=1,
    )


@pytest.fixture
def user_factory() -> Iterator[list[httpx2.Client]]:
    """A user's own factory (``set_client_factory``), recording the clients it builds; an equivalent of the default
    factory (same hooks, redirects followed, no timeout) is put back afterwards."""
    hooks = [h for h in get_session().event_hooks.get("request", []) if h is not hf_client._apply_timeout]

    def default_like() -> httpx2.Client:
        return httpx2.Client(event_hooks={"request": list(hooks)}, follow_redirects=True, timeout=None)

    built: list[httpx2.Client] = []

    def factory() -> httpx2.Client:
        built.append(default_like())
        return built[-1]

    set_client_factory(factory)
    yield built
    set_client_factory(default_like)


def test_a_users_client_factory_stays_in_place_and_its_client_gets_the_timeout(
    user_factory: list[httpx2.Client], fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    fault_proxy.faults.append(ProxyFault("GET", r"/refs$", kind="stall", delay=3.0))
    with pytest.raises(RemoteTimeoutError):
        hub.versions(REPO, "coach", store=_store(fault_proxy, tmp_path, attempts=1))
    assert user_factory and get_session() is user_factory[-1]


def test_a_client_rebuilt_during_an_attempt_gets_the_timeout_on_the_next_attempt(
    fault_proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(fault_proxy, tmp_path, attempts=2)
    # Attempt 1 answers 503 (retried), attempt 2 stalls.
    fault_proxy.faults += [
        ProxyFault("GET", r"/refs$", status=503),
        ProxyFault("GET", r"/refs$", kind="stall", delay=3.0),
    ]
    real = store._api.list_repo_refs
    calls = []

    def rebuilding(*args: Any, **kwargs: Any) -> Any:
        if not calls:  # as huggingface_hub does after a connection error: the next request builds a new client
            close_session()
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(store._api, "list_repo_refs", rebuilding)
    with pytest.raises(RemoteTimeoutError):
        hub.versions(REPO, "coach", store=store)
    assert len(calls) == 2 and [what for _, _, what in fault_proxy.log] == ["status", "stall"]
