"""Helpers of the serving tests: a tokenizer for every id of the tiny models, a server in a background thread, a gate
that holds the decoding loop, and waiting on conditions (never on durations: the suite runs on busy machines)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from tiny_models import make_tokenizer
from transformers import PreTrainedTokenizerFast

from peft_ext.serving.service import Service

if TYPE_CHECKING:
    from peft_ext.serving.server import Server

REPO = "org/prompts"  # the store's repo (tests/serving/conftest.py pushes to it)
EOS = 1  # the tiny models' end-of-sequence id
PROMPT_NAMES = [f"p{i}" for i in range(7)]  # served by every test service; with the store's coach prompt: 8 prompts
ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE = (
    "{% for message in messages %}<s> {{ message['role'] }} {{ message['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant {% endif %}"
)
PATIENCE_S = 300.0  # how long a condition may take on a loaded 2-core machine before the test gives up


def make_serving_tokenizer() -> PreTrainedTokenizerFast:
    """The suite's word-level tokenizer with the chat roles, every id of the tiny models a distinct word (so any
    generated id decodes), and a chat template."""
    tokenizer = make_tokenizer(extra_words=ROLES, fill_vocab=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def prompt_tensor(seed: int, length: int = 4, hidden: int = 32) -> torch.Tensor:
    return torch.randn(length, hidden, generator=torch.Generator().manual_seed(seed)) * 0.5


def save_prompt(folder: Path, prompt: torch.Tensor) -> Path:
    """A PEFT prompt-tuning adapter folder holding ``prompt``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": prompt.shape[0],
        "token_dim": prompt.shape[1],
        "num_transformer_submodules": 1,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file({"prompt_embeddings": prompt.contiguous()}, str(folder / "adapter_model.safetensors"))
    return folder


def wait_for(condition: Callable[[], Any], what: str, timeout: float = PATIENCE_S) -> Any:
    """Poll ``condition`` until it is truthy; fail (naming ``what``) only after a generous timeout."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return value


@contextmanager
def running(service: Service, **options: Any) -> Iterator[Server]:
    """``service`` served on a free port of 127.0.0.1 in a background thread; stopped (gracefully) at the end."""
    from peft_ext.serving.server import Server, bind  # the serve extra, needed by the HTTP tests only

    options = {"log_level": "warning", "access_log": False, **options}
    server = Server(service, bind("127.0.0.1", 0), **options)
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), "the server to start")
    assert thread.is_alive(), "the server thread died while starting"
    server.thread = thread  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()
        thread.join(PATIENCE_S)


class Gate:
    """A scheduler ``step_hook``: ``Service(..., step_hook=gate)`` or ``Scheduler(..., step_hook=gate)``.

    While closed it holds the decoding thread before each decoding step (a request's prefill, its first token, still
    runs), so a test acts while requests are provably mid-generation, without timing anything; ``waiting`` is set
    while the scheduler is held. :meth:`fail` makes the next step raise: a failure of the model that no request
    explains.
    """

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self.waiting = threading.Event()
        self._error: BaseException | None = None

    def __call__(self, rows: int) -> None:
        if not self._open.is_set():
            self.waiting.set()
            self._open.wait(PATIENCE_S)
            self.waiting.clear()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def fail(self, error: BaseException) -> None:
        self._error = error


def reference(service: Service, model: str, input_ids: list[int], max_tokens: int) -> tuple[list[int], str]:
    """The greedy tokens of one request run alone through ``MultiPromptModel.generate`` (up to EOS, excluded) and
    the finish reason the server should give."""
    target = service.lookup(model)
    name = None if target.prompt is None else target.name
    output = service.prompts.generate(
        torch.tensor([input_ids]), [name], max_new_tokens=max_tokens, do_sample=False, pad_token_id=0
    )
    new = output[0, len(input_ids) :].tolist()
    return (new[: new.index(EOS)], "stop") if EOS in new else (new, "length")


def words(tokenizer: Any, ids: list[int]) -> list[str]:
    """The words of the serving tokenizer's ``ids`` (special tokens dropped, as in the served text)."""
    return str(tokenizer.decode(ids, skip_special_tokens=True)).split()


def spy_on_submit(service: Service, monkeypatch: Any) -> list[Any]:
    """Every Generation the service submits from now on (to look at what the scheduler did with a request)."""
    made: list[Any] = []
    submit_all = service.scheduler.submit_all

    def recording(generations: Any, **kwargs: Any) -> Any:
        submit_all(generations, **kwargs)
        made.extend(generations)

    monkeypatch.setattr(service.scheduler, "submit_all", recording)
    return made
