"""The scheduler under the HTTP layer: one request's failure stays its own, a generation ends for the reason its
caller gives, a stop found by the caller costs no further step, and a dead decoding thread refuses requests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from serving_testutils import EOS, Gate, prompt_tensor, wait_for
from tiny_models import make_model

from peft_ext import MultiPromptModel
from peft_ext.engine import Prompt
from peft_ext.errors import ServerStoppingError
from peft_ext.serving.sampling import SamplingParams
from peft_ext.serving.scheduler import Scheduler

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
INPUT = [4, 6, 7, 8]


@pytest.fixture
def served() -> MultiPromptModel:
    served = MultiPromptModel(make_model("llama"))
    served.add("a", prompt_tensor(0, length=3))
    return served


@pytest.fixture
def scheduler(served: MultiPromptModel) -> Iterator[Scheduler]:
    scheduler = Scheduler(served.engine, eos_token_ids=[EOS])
    yield scheduler
    scheduler.shutdown(drain=False)


def _alone(served: MultiPromptModel, max_tokens: int) -> list[int]:
    output = served.generate(torch.tensor([INPUT]), ["a"], max_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
    return output[0, len(INPUT) :].tolist()


def _broken_prompt() -> Prompt:
    def compute() -> torch.Tensor:
        raise RuntimeError("this prompt cannot be computed")

    return Prompt(None, compute)


def test_a_failing_prefill_ends_only_its_own_request(served: MultiPromptModel, scheduler: Scheduler) -> None:
    long = SamplingParams(max_tokens=30, temperature=0.0)
    running = scheduler.submit(served.row_prompt("a"), INPUT, long)
    wait_for(lambda: running.tokens, "the first request to run")
    # Admitted in one step (the scheduler's lock is re-entrant): one that fails between two that do not.
    with scheduler._wake:
        before = scheduler.submit(served.row_prompt("a"), INPUT, GREEDY)
        broken = scheduler.submit(_broken_prompt(), INPUT, GREEDY)
        after = scheduler.submit(served.row_prompt("a"), INPUT, GREEDY)
    for generation in (running, before, broken, after):
        wait_for(lambda g=generation: g.finish_reason, "every request to finish")
    assert broken.finish_reason == "error" and "cannot be computed" in (broken.error or "")
    assert [t.id for t in running.tokens] == _alone(served, 30) and running.finish_reason == "length"
    for generation in (before, after):
        assert [t.id for t in generation.tokens] == _alone(served, 8) and generation.finish_reason == "length"
    assert scheduler.alive


def test_a_generation_ends_for_the_reason_its_caller_gives(served: MultiPromptModel, scheduler: Scheduler) -> None:
    with scheduler._wake:  # cancelled while still waiting
        waiting = scheduler.submit(served.row_prompt("a"), INPUT, GREEDY)
        waiting.cancel("stop")
    assert list(waiting) == [] and waiting.finish_reason == "stop"
    gate = Gate(scheduler)
    gate.close()  # the row cannot get past its first token until the test says so
    gone = scheduler.submit(served.row_prompt("a"), INPUT, SamplingParams(max_tokens=100, temperature=0.0))
    next(iter(gone))
    gone.cancel()
    gate.open()
    assert list(gone) == [] and gone.finish_reason == "cancelled" and len(gone.tokens) == 1
    wait_for(lambda: scheduler.stats().running == 0, "the row to leave the batch")


def test_a_stop_check_ends_the_generation_at_that_token(served: MultiPromptModel, scheduler: Scheduler) -> None:
    seen: list[int] = []

    def third(token: object) -> bool:
        seen.append(1)
        return len(seen) == 3

    generation = scheduler.submit(served.row_prompt("a"), INPUT, GREEDY, stop_check=third)
    received = []
    for token in generation:
        received.append(token.id)
        if len(received) == 3:  # the finish is decided before the token goes out
            assert generation.finish_reason == "stop"
    assert received == _alone(served, 8)[:3] and len(generation.tokens) == 3
    wait_for(lambda: scheduler.stats().requests_finished == 1, "the generation to be retired")


def test_a_dead_decoding_thread_refuses_requests(
    served: MultiPromptModel, scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object) -> None:
        raise RuntimeError("broken beyond repair")

    monkeypatch.setattr(scheduler._batch, "step", fail)
    monkeypatch.setattr(scheduler._batch, "leave", fail)  # and the recovery fails too: the thread dies
    doomed = scheduler.submit(served.row_prompt("a"), INPUT, GREEDY)
    with scheduler._wake:  # queued behind it: left waiting forever unless the dying thread ends it
        waiting = [scheduler.submit(served.row_prompt("a"), INPUT, GREEDY) for _ in range(40)]
    wait_for(lambda: not scheduler.alive, "the decoding thread to die")
    for generation in (doomed, *waiting):
        list(generation)  # its stream ends
        assert generation.finish_reason == "error" and "decoding thread stopped" in (generation.error or "")
    with pytest.raises(ServerStoppingError, match="decoding thread has stopped"):
        scheduler.submit(served.row_prompt("a"), INPUT, GREEDY)
