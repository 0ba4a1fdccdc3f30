"""Fixtures of the serving tests: services on the tiny Llama with soft prompts, one of them from a local store.

Helpers (the tokenizer, the background server, the gate) live in serving_testutils.py and are imported by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from serving_testutils import PROMPT_NAMES, REPO, make_serving_tokenizer, prompt_tensor, save_prompt
from tiny_models import make_model

import hub
from peft_ext.serving.service import Service


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> hub.LocalStore:
    """A local store where ``org/prompts`` has coach 1.0.0 and 1.1.0 (trained on the tiny Llama of seed 0) and
    ``other`` 1.0.0 (trained on another base model)."""
    root = tmp_path_factory.mktemp("serving_store")
    store = hub.LocalStore(root / "store")
    model, tokenizer = make_model("llama"), make_serving_tokenizer()
    for version, seed in (("1.0.0", 100), ("1.1.0", 101)):
        folder = save_prompt(root / f"coach-{version}", prompt_tensor(seed, length=5))
        hub.push(folder, REPO, task="coach", version=version, store=store, base_model=model, tokenizer=tokenizer)
    other = save_prompt(root / "other", prompt_tensor(102))
    hub.push(other, REPO, task="other", store=store, base_model=make_model("llama", seed=1), tokenizer=tokenizer)
    return store


@pytest.fixture(scope="module")
def make_service(store: hub.LocalStore) -> Iterator[Callable[..., Service]]:
    """``make_service(**options)``: a new service on the tiny Llama with prompts p0..p6 (lengths 2..8), pulling
    references from ``store``. Services not shut down by their server are shut down at the end of the module."""
    made: list[Service] = []

    def make(**options: object) -> Service:
        options = {"store": store, **options}
        service = Service(make_model("llama"), make_serving_tokenizer(), base_name="tiny", **options)
        for index, name in enumerate(PROMPT_NAMES):
            service.add(name, prompt_tensor(index, length=2 + index))
        made.append(service)
        return service

    yield make
    for service in made:
        service.shutdown(drain=False)


@pytest.fixture
def prompt_folder(tmp_path: Path) -> Path:
    return save_prompt(tmp_path / "adapter", prompt_tensor(7, length=3))
