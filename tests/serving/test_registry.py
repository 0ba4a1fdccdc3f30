"""Store references off the request path: a slow store never stalls requests for prompts already loaded, one lookup
per reference however many requests wait for it, a bounded wait (504) and a bounded number of lookups in flight
(429), and a registry that stays bounded whatever spellings of references clients send."""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_testutils import (
    PATIENCE_S,
    REPO,
    make_serving_tokenizer,
    prompt_tensor,
    reference,
    running,
    save_prompt,
    wait_for,
    words,
)
from tiny_models import make_model

import hub
from peft_ext.errors import InvalidModelNameError, PeftExtError, ServerBusyError

COACH = f"{REPO}:coach"
LOADED = {"model": "p3", "prompt": "hello world", "max_tokens": 4, "temperature": 0}


class StalledStore(hub.LocalStore):
    """The serving tests' store, whose version lookups wait until :meth:`release` (a Hub that does not answer),
    counting them."""

    def __init__(self, store: hub.LocalStore) -> None:
        super().__init__(store.root)
        self.released = threading.Event()
        self.calls = 0
        self.waiting = 0
        self._count = threading.Lock()

    def versions(self, repo: str, task: str) -> Any:
        with self._count:
            self.calls += 1
            self.waiting += 1
        try:
            self.released.wait(PATIENCE_S)
        finally:
            with self._count:
                self.waiting -= 1
        return super().versions(repo, task)

    def release(self) -> None:
        self.released.set()


def test_a_stalled_store_never_holds_requests_for_loaded_prompts(make_service: Any, store: hub.LocalStore) -> None:
    stalled = StalledStore(store)
    service = make_service(store=stalled, registry={"max_pending": 8, "lookup_timeout_s": PATIENCE_S})
    expected, _ = reference(service, "p3", service.encode_text(LOADED["prompt"]), 4)
    with running(service) as server, httpx.Client(base_url=server.url, timeout=PATIENCE_S) as http:
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            # 45 requests name one reference; each spelling is one lookup, shared by every request naming it.
            models = [f"{COACH}@{spelling}" for spelling in ("^1.0", "~1.1", "1.1.0")]
            stuck = [
                pool.submit(http.post, "/v1/completions", json={**LOADED, "model": models[i % 3]}) for i in range(45)
            ]
            wait_for(lambda: stalled.waiting == 3, "the three lookups to reach the store")
            # Meanwhile loaded prompts answer, with their own tokens, while every lookup is stalled.
            for _ in range(10):
                answer = http.post("/v1/completions", json=LOADED).json()["choices"][0]
                assert answer["text"].split() == words(service.tokenizer, expected)
            assert stalled.waiting == 3 and not any(f.done() for f in stuck)
            # Up to the limit of lookups in flight, other references wait on the store too; one more is refused.
            others = [f"{COACH}@{spelling}" for spelling in ("~1.0", "latest", "^1", "~1", "1.0.0")]
            stuck += [pool.submit(http.post, "/v1/completions", json={**LOADED, "model": m}) for m in others]
            wait_for(lambda: service.registry.sizes()["pending"] == 8, "the lookups in flight to reach the limit")
            refused = http.post("/v1/completions", json={**LOADED, "model": f"{COACH}@~1.0.0"})
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "server_busy"
            assert http.post("/v1/completions", json=LOADED).status_code == 200
            stalled.release()
            results = [f.result() for f in stuck]
        assert all(r.status_code == 200 for r in results)
        assert {r.json()["model"] for r in results} == {f"{COACH}@1.0.0", f"{COACH}@1.1.0"}
        assert stalled.calls == 3 + len(others)  # one lookup per reference, not one per request
        assert http.get("/health").json() == {"status": "ok"}


def test_a_request_waits_for_a_lookup_at_most_the_timeout(make_service: Any, store: hub.LocalStore) -> None:
    stalled = StalledStore(store)
    service = make_service(store=stalled, registry={"lookup_timeout_s": 0.05})
    with running(service) as server, httpx.Client(base_url=server.url, timeout=PATIENCE_S) as http:
        late = http.post("/v1/completions", json={**LOADED, "model": f"{COACH}@^1.0"})
        assert late.status_code == 504 and late.json()["error"]["code"] == "store_timeout"
        assert "retry shortly" in late.json()["error"]["message"]
        stalled.release()  # the lookup went on: the next request finds the version
        wait_for(lambda: service.registry.sizes()["pending"] == 0, "the lookup to finish")
        assert http.post("/v1/completions", json={**LOADED, "model": f"{COACH}@^1.0"}).status_code == 200
        assert stalled.calls == 1


def test_the_registry_stays_bounded_whatever_spellings_clients_send(make_service: Any) -> None:
    """10,000 requests naming 1,000 spellings of references: 17 without whitespace (14 constraint forms that resolve,
    3 that match nothing or do not parse) and spellings with whitespace or control characters around them, which are
    refused and never remembered. The registry keeps at most
    its bounds (here 4 references, 1 pulled version) however the valid ones alternate."""
    service = make_service(registry={"max_references": 4, "max_pulled": 1})
    constraints = ["", "@latest", "@^1", "@^1.0", "@^1.0.0", "@^1.1", "@^1.1.0", "@~1", "@~1.0", "@~1.0.0", "@~1.1"]
    constraints += ["@~1.1.0", "@1.0.0", "@1.1.0", "@^0.0.0", "@~0", "@=1.0.0"]
    valid = [f"{COACH}{c}" for c in constraints]
    padding = ["", " ", "\n", "\t", "\r\n", "\u00a0", "\u2003", "\x00", "\x0b"]
    padded = [f"{before}{model}{after}" for model in valid for before in padding for after in padding]
    spellings = valid + [spelling for spelling in padded if spelling not in valid][: 1000 - len(valid)]
    assert len(set(spellings)) == 1000
    outcomes: dict[str, int] = {}
    for i in range(10_000):
        model = spellings[(i * 7919) % 1000]  # every spelling, ten times, interleaved
        try:
            service.lookup(model)
            outcome = "served"
        except InvalidModelNameError:
            outcome = "refused"
        except PeftExtError:  # a constraint nothing matches, or a spelling the store does not know
            outcome = "unknown"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        sizes = service.registry.sizes()
        assert sizes["references"] <= 4 and sizes["pulled"] <= 1, sizes
    assert outcomes == {"served": 140, "unknown": 30, "refused": 9_830}, outcomes
    pulled = [name for name in service.prompts.names if name.startswith(COACH)]
    assert pulled in ([f"{COACH}@1.0.0"], [f"{COACH}@1.1.0"])


def test_whitespace_in_a_model_is_a_400_naming_it(make_service: Any) -> None:
    with running(make_service()) as server, httpx.Client(base_url=server.url, timeout=PATIENCE_S) as http:
        for model in (f"{COACH}@1.0.0\n", f" {COACH}", "p3 "):
            error = http.post("/v1/completions", json={**LOADED, "model": model}).json()["error"]
            assert error["code"] == "invalid_model_reference" and "whitespace" in error["message"]
        assert http.post("/v1/completions", json={**LOADED, "model": "x" * 300}).status_code == 400


def test_lookups_beyond_the_limit_are_refused_in_the_service(make_service: Any, store: hub.LocalStore) -> None:
    stalled = StalledStore(store)
    service = make_service(store=stalled, registry={"max_pending": 1})
    first = service.registry.lookup_reference(f"{COACH}@^1.0")
    assert service.registry.lookup_reference(f"{COACH}@^1.0") is first  # single flight
    with pytest.raises(ServerBusyError, match="store lookups are in flight"):
        service.registry.lookup_reference(f"{COACH}@~1.1")
    stalled.release()
    assert first.result(PATIENCE_S) == f"{COACH}@1.1.0"


def test_a_stale_constraint_answers_at_once_and_is_re_resolved_in_the_background(
    make_service: Any, tmp_path: Path
) -> None:
    """After ``refresh_s`` (on the registry's injected clock), a constraint keeps answering with the version it
    knows while the store is asked again; the next request gets the version pushed since."""
    own = hub.LocalStore(tmp_path / "store")
    model, tokenizer = make_model("llama"), make_serving_tokenizer()

    def push(version: str, seed: int) -> None:
        folder = save_prompt(tmp_path / version, prompt_tensor(seed, length=3))
        hub.push(folder, REPO, task="coach", version=version, store=own, base_model=model, tokenizer=tokenizer)

    now = [0.0]
    service = make_service(store=own, registry={"clock": lambda: now[0], "refresh_s": 60.0})
    push("1.0.0", 1)
    assert service.lookup(f"{COACH}@^1.0").name == f"{COACH}@1.0.0"
    push("1.1.0", 2)
    now[0] = 59.0
    assert service.lookup(f"{COACH}@^1.0").name == f"{COACH}@1.0.0" and service.registry.sizes()["pending"] == 0
    now[0] = 61.0
    assert service.lookup(f"{COACH}@^1.0").name == f"{COACH}@1.0.0"  # stale: answered with what is known
    wait_for(lambda: service.registry.sizes()["pending"] == 0, "the background lookup to finish")
    assert service.lookup(f"{COACH}@^1.0").name == f"{COACH}@1.1.0"


def test_a_version_named_exactly_stays_loaded_while_it_is_used(make_service: Any, tmp_path: Path) -> None:
    """The pulled versions kept are the least recently *used*: naming one exactly counts as a use."""
    own = hub.LocalStore(tmp_path / "store")
    model, tokenizer = make_model("llama"), make_serving_tokenizer()
    for index, version in enumerate(("1.0.0", "1.1.0", "1.2.0")):
        folder = save_prompt(tmp_path / version, prompt_tensor(index, length=3))
        hub.push(folder, REPO, task="coach", version=version, store=own, base_model=model, tokenizer=tokenizer)
    service = make_service(store=own, registry={"max_pulled": 2})
    service.lookup(f"{COACH}@1.0.0")
    service.lookup(f"{COACH}@1.1.0")
    service.lookup(f"{COACH}@1.0.0")  # loaded: a use, by its exact name
    service.lookup(f"{COACH}@1.2.0")  # one more pulled: the least recently used (1.1.0) goes
    assert sorted(n for n in service.prompts.names if n.startswith(COACH)) == [f"{COACH}@1.0.0", f"{COACH}@1.2.0"]


def test_store_errors_name_no_server_paths(make_service: Any, store: hub.LocalStore) -> None:
    with running(make_service()) as server, httpx.Client(base_url=server.url, timeout=PATIENCE_S) as http:
        for model in (f"{REPO}:missing@^1", f"{REPO}:coach@^9", "org/nothing:coach"):
            answer = http.post("/v1/completions", json={**LOADED, "model": model})
            assert answer.status_code == 404 and str(store.root) not in answer.text
            assert str(store.root.parent) not in answer.text, answer.text
