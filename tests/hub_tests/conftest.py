"""Fixtures of the hub tests: adapter folders, the fake Hub server, and one ``store`` fixture for both stores.

pytest finds them here for every test under tests/hub_tests, without imports. ``hermetic_hf`` is autouse: no hub
test sees the caller's HF_* environment. Plain helpers (``make_adapter``, ``edit_stored``, ``REPO``, ``TOKEN``) are
in hub_testutils.py and are imported by name; nothing is ever imported from a conftest.py (see tests/tiny_models.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # the fake server speaks plain HTTP, never Xet
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_hub_server import FakeHub
from fault_proxy import FaultProxy
from hub_testutils import TOKEN, make_adapter
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import disable_progress_bars

from hub import HfStore, LocalStore, Store


@pytest.fixture(autouse=True)
def hermetic_hf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The caller's HF_* environment does not reach the tests: online, no token, no saved login.

    huggingface_hub reads HF_HUB_OFFLINE and the token path once at import, so the constants are patched as well as
    the variables; tests that want offline mode or a token set them themselves.
    """
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no_saved_login" / "token"))
    disable_progress_bars()


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    server = FakeHub(token=TOKEN)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fault_proxy(fake_hub: FakeHub) -> Iterator[FaultProxy]:
    """A proxy in front of ``fake_hub`` that injects 5xx, stalls, truncated and corrupted bodies."""
    proxy = FaultProxy(fake_hub.url)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxied_store(fault_proxy: FaultProxy, tmp_path: Path) -> HfStore:
    """An HfStore that reaches the fake Hub through the fault proxy, with a short timeout (it only bounds hangs)."""
    return HfStore(
        endpoint=fault_proxy.url, token=TOKEN, cache_dir=tmp_path / "proxied_cache", retry_wait_s=0.01, timeout_s=2
    )


@pytest.fixture
def hf_store(fake_hub: FakeHub, tmp_path: Path) -> HfStore:
    return HfStore(endpoint=fake_hub.url, token=TOKEN, cache_dir=tmp_path / "hf_cache", retry_wait_s=0.01)


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["local", "hf"])
def store(request: pytest.FixtureRequest) -> Store:
    """The same tests run against both stores."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def adapter(tmp_path: Path) -> Callable[..., Path]:
    """``adapter(seed=0, n=4, dim=8, ...)``: a fresh adapter folder under tmp_path."""
    counter = iter(range(10**6))

    def make(seed: int = 0, **kwargs: object) -> Path:
        return make_adapter(tmp_path / f"adapter_{next(counter)}", seed, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def tiny_llama():  # noqa: ANN201
    """A tiny LlamaForCausalLM built from a config (no download) and a matching word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *[f"w{i}" for i in range(61)]])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")

    def build(seed: int = 0):  # noqa: ANN202
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=64,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            architectures=["LlamaForCausalLM"],
        )
        return LlamaForCausalLM(config).eval()

    return build, tokenizer
