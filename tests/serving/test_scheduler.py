"""The scheduler under the HTTP layer: one request's failure stays its own, a generation ends for the reason its
caller gives, a stop found by the caller costs no further step, and a dead decoding thread refuses requests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from serving_testutils import EOS, Gate, make_serving_tokenizer, prompt_tensor, wait_for
from tiny_models import make_model

from peft_ext import MultiPromptModel
from peft_ext.engine import Prompt
from peft_ext.errors import InvalidRequestError, ServerStoppingError
from peft_ext.serving.sampling import SamplingParams
from peft_ext.serving.scheduler import Generation, Scheduler, SchedulerStats
from peft_ext.serving.text import TextStream

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
INPUT = [4, 6, 7, 8]


@pytest.fixture
def served() -> MultiPromptModel:
    served = MultiPromptModel(make_model("llama"))
    served.add("a", prompt_tensor(0, length=3))
    return served


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def scheduler(served: MultiPromptModel, gate: Gate) -> Iterator[Scheduler]:
    scheduler = Scheduler(served.engine, eos_token_ids=[EOS], step_hook=gate)
    yield scheduler
    scheduler.shutdown(drain=False)


def _alone(served: MultiPromptModel, max_tokens: int, input_ids: list[int] = INPUT) -> list[int]:
    output = served.generate(
        torch.tensor([input_ids]), ["a"], max_new_tokens=max_tokens, do_sample=False, pad_token_id=0
    )
    return output[0, len(input_ids) :].tolist()


def _record_forwards(served: MultiPromptModel, forwards: list[tuple[int, int]]) -> Any:
    """Note (rows, tokens) of every forward of the model fed ``input_ids`` (prefills and decoding steps), through a
    public forward pre-hook; returns the hook's handle."""

    def record(module: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        ids = kwargs.get("input_ids")
        if isinstance(ids, torch.Tensor):
            forwards.append((int(ids.shape[0]), int(ids.shape[1])))

    return served.engine.model.register_forward_pre_hook(record, with_kwargs=True)


def _broken_prompt() -> Prompt:
    def compute() -> torch.Tensor:
        raise RuntimeError("this prompt cannot be computed")

    return Prompt(None, compute)


def test_a_failing_prefill_ends_only_its_own_request(
    served: MultiPromptModel, scheduler: Scheduler, gate: Gate
) -> None:
    long = SamplingParams(max_tokens=30, temperature=0.0)
    gate.close()
    running = scheduler.submit(served.row_prompt("a"), INPUT, long)
    wait_for(gate.waiting.is_set, "the first request to run")
    # Admitted in one step, while the first request is held: one that fails between two that do not.
    before = scheduler.submit(served.row_prompt("a"), INPUT, GREEDY)
    broken = scheduler.submit(_broken_prompt(), INPUT, GREEDY)
    after = scheduler.submit(served.row_prompt("a"), INPUT, GREEDY)
    gate.open()
    for generation in (running, before, broken, after):
        wait_for(lambda g=generation: g.finish_reason, "every request to finish")
    assert broken.finish_reason == "error" and "cannot be computed" in (broken.error or "")
    assert [t.id for t in running.tokens] == _alone(served, 30) and running.finish_reason == "length"
    for generation in (before, after):
        assert [t.id for t in generation.tokens] == _alone(served, 8) and generation.finish_reason == "length"
    assert scheduler.alive


def test_waiting_requests_are_prefilled_together_within_the_token_budget(served: MultiPromptModel, gate: Gate) -> None:
    """Requests that wait while a step runs are prefilled in one forward at the next, up to ``admit_per_step``
    requests of ``prefill_tokens_per_step`` input tokens (here 2 of 4 tokens per step); each answers as alone."""
    forwards: list[tuple[int, int]] = []
    hook = _record_forwards(served, forwards)
    scheduler = Scheduler(served.engine, eos_token_ids=[EOS], step_hook=gate, prefill_tokens_per_step=10)
    try:
        gate.close()
        running = scheduler.submit(served.row_prompt("a"), INPUT, SamplingParams(max_tokens=30, temperature=0.0))
        wait_for(gate.waiting.is_set, "the first request to run")
        waiting = [scheduler.submit(served.row_prompt("a"), INPUT, GREEDY) for _ in range(5)]
        gate.open()
        for generation in (running, *waiting):
            wait_for(lambda g=generation: g.finish_reason, "every request to finish")
    finally:
        hook.remove()
        scheduler.shutdown(drain=False)
    assert [shape for shape in forwards if shape[1] > 1] == [(1, 4), (2, 4), (2, 4), (1, 4)]  # steps feed 1 token
    assert [t.id for t in running.tokens] == _alone(served, 30)
    for generation in waiting:
        assert [t.id for t in generation.tokens] == _alone(served, 8) and generation.finish_reason == "length"


def test_a_long_input_is_prefilled_in_chunks_between_decoding_steps(served: MultiPromptModel, gate: Gate) -> None:
    """With chunks of 4 tokens, a 10-token input joining a running request runs as chunks of 4, 4 and 2 tokens, the
    running request decoding a step between them; both answer as alone."""
    long_input = [9, 4, 12, 6, 7, 8, 15, 5, 11, 6]
    forwards: list[tuple[int, int]] = []
    hook = _record_forwards(served, forwards)
    scheduler = Scheduler(served.engine, eos_token_ids=[EOS], step_hook=gate, prefill_chunk_tokens=4)
    try:
        gate.close()
        running = scheduler.submit(served.row_prompt("a"), INPUT, SamplingParams(max_tokens=30, temperature=0.0))
        wait_for(gate.waiting.is_set, "the first request to run")
        long = scheduler.submit(served.row_prompt("a"), long_input, GREEDY)
        gate.open()
        for generation in (running, long):
            wait_for(lambda g=generation: g.finish_reason, "every request to finish")
    finally:
        hook.remove()
        scheduler.shutdown(drain=False)
    events = [("prefill", tokens) if tokens > 1 else ("step", rows) for rows, tokens in forwards]
    chunks = [i for i, (kind, _) in enumerate(events) if kind == "prefill"][1:]  # the first is the running request's
    assert [events[i][1] for i in chunks] == [4, 4, 2]
    assert all(events[i + 1] == ("step", 1) for i in chunks[:-1])  # the running row decodes between chunks
    assert [t.id for t in running.tokens] == _alone(served, 30)
    assert [t.id for t in long.tokens] == _alone(served, 8, long_input) and long.finish_reason == "length"


def test_a_failure_choosing_a_token_ends_only_that_row(
    served: MultiPromptModel, scheduler: Scheduler, gate: Gate
) -> None:
    """What fails after a row joined the batch (here its sampling, on logits it cannot sample from) removes exactly
    that row: the others finish with their own tokens, and the scheduler's books match its batch."""
    long = SamplingParams(max_tokens=30, temperature=0.0)
    gate.close()
    running = [scheduler.submit(served.row_prompt("a"), INPUT, long) for _ in range(2)]
    wait_for(lambda: scheduler.stats().running == 2 and gate.waiting.is_set(), "two requests to run")
    poisoned = Generation(served.row_prompt("a"), INPUT, SamplingParams(max_tokens=5, temperature=1.0, top_p=0.5))
    scheduler.submit_all([poisoned])
    poisoned.params = _Unsampleable()  # type: ignore[assignment]  # fails on the decoding thread, not at submit
    gate.open()
    for generation in (*running, poisoned):
        wait_for(lambda g=generation: g.finish_reason, "every request to finish")
    assert poisoned.finish_reason == "error" and "cannot sample" in (poisoned.error or "")
    for generation in running:
        assert [t.id for t in generation.tokens] == _alone(served, 30) and generation.finish_reason == "length"
    wait_for(lambda: scheduler.stats().running == 0, "the batch to empty")
    after = scheduler.submit(served.row_prompt("a"), INPUT, GREEDY)
    assert [o.token.id for o in after] == _alone(served, 8) and scheduler.alive


class _Unsampleable:
    """Sampling parameters whose every use fails after the prefill has read whether to score the input (a stand-in
    for any per-row failure after the row joined)."""

    def __init__(self, prompt_logprobs: bool = False) -> None:
        self.prompt_logprobs, self.max_tokens = prompt_logprobs, 5

    def __getattr__(self, name: str) -> object:
        raise RuntimeError("cannot sample this row")


def test_a_failure_scoring_an_echoed_input_ends_only_that_row(
    served: MultiPromptModel, scheduler: Scheduler, gate: Gate
) -> None:
    """A row whose input is scored (echo) joins the batch before its scoring; a failure there removes exactly that
    row, and the running rows finish with their own tokens."""
    long = SamplingParams(max_tokens=30, temperature=0.0)
    gate.close()
    running = [scheduler.submit(served.row_prompt("a"), INPUT, long) for _ in range(2)]
    wait_for(lambda: scheduler.stats().running == 2 and gate.waiting.is_set(), "two requests to run")
    poisoned = Generation(served.row_prompt("a"), INPUT, SamplingParams(max_tokens=5, prompt_logprobs=True))
    scheduler.submit_all([poisoned])
    poisoned.params = _Unsampleable(prompt_logprobs=True)  # type: ignore[assignment]
    gate.open()
    for generation in (*running, poisoned):
        wait_for(lambda g=generation: g.finish_reason, "every request to finish")
    assert poisoned.finish_reason == "error" and "cannot sample" in (poisoned.error or "")
    assert poisoned.prompt_tokens is None and not poisoned.tokens
    for generation in running:
        assert [t.id for t in generation.tokens] == _alone(served, 30) and generation.finish_reason == "length"
    wait_for(lambda: scheduler.stats().running == 0, "the batch to empty")
    assert scheduler.alive


def test_an_input_only_scored_never_joins_the_batch(served: MultiPromptModel, scheduler: Scheduler) -> None:
    """max_tokens 0 with prompt_logprobs: the input's tokens come back scored, nothing is generated, and the batch
    never holds the row."""
    rows: list[int] = []
    hooked = Scheduler(served.engine, eos_token_ids=[EOS], step_hook=rows.append)
    try:
        generation = hooked.submit(served.row_prompt("a"), INPUT, SamplingParams(max_tokens=0, prompt_logprobs=True))
        assert list(generation) == [] and generation.finish_reason == "length"
        assert [t.id for t in generation.prompt_tokens or []] == INPUT and not generation.tokens
        assert rows == [] and hooked.stats().running == 0
    finally:
        hooked.shutdown(drain=False)


def test_a_seed_out_of_range_cannot_even_make_a_request() -> None:
    """Sampling parameters with a seed torch's generator refuses cannot be built, so no such request reaches the
    scheduler (the HTTP corpus sends them beside running streams)."""
    for seed in (1 << 64, -(1 << 63) - 1):
        with pytest.raises(InvalidRequestError, match="seed must be an integer"):
            SamplingParams(temperature=1.0, seed=seed)
    SamplingParams(temperature=1.0, seed=(1 << 64) - 1).generator()
    SamplingParams(temperature=1.0, seed=-(1 << 63)).generator()


def test_a_generation_ends_for_the_reason_its_caller_gives(
    served: MultiPromptModel, scheduler: Scheduler, gate: Gate
) -> None:
    gate.close()
    first = scheduler.submit(served.row_prompt("a"), INPUT, SamplingParams(max_tokens=100, temperature=0.0))
    wait_for(gate.waiting.is_set, "the scheduler to be held")
    waiting = scheduler.submit(served.row_prompt("a"), INPUT, GREEDY)
    waiting.cancel("stop")  # cancelled while still waiting: it never runs
    assert next(iter(first)).token.id == _alone(served, 1)[0]
    first.cancel()
    gate.open()
    assert list(first) == [] and first.finish_reason == "cancelled" and len(first.tokens) == 1
    assert list(waiting) == [] and waiting.finish_reason == "stop" and waiting.tokens == []
    wait_for(lambda: scheduler.stats().running == 0, "the row to leave the batch")


def test_a_stop_string_ends_the_generation_at_that_token(served: MultiPromptModel, scheduler: Scheduler) -> None:
    tokenizer = make_serving_tokenizer()
    expected = _alone(served, 8)
    third_word = tokenizer.decode([expected[2]], skip_special_tokens=True).strip()
    text = TextStream(tokenizer, INPUT, stop=[third_word])
    generation = scheduler.submit(served.row_prompt("a"), INPUT, GREEDY, text=text)
    received = []
    for output in generation:
        received.append(output.token.id)
        if len(received) == 3:  # the finish is decided before the token goes out
            assert generation.finish_reason == "stop"
    assert received == expected[:3] and len(generation.tokens) == 3
    assert third_word not in text.text
    wait_for(lambda: scheduler.stats().requests_finished == 1, "the generation to be retired")


def test_a_failing_decoding_step_stops_the_scheduler_and_says_why(served: MultiPromptModel) -> None:
    gate = Gate()
    scheduler = Scheduler(served.engine, eos_token_ids=[EOS], max_running=1, step_hook=gate)
    try:
        gate.close()
        doomed = scheduler.submit(served.row_prompt("a"), INPUT, GREEDY)
        wait_for(gate.waiting.is_set, "the first request to run")
        waiting = [scheduler.submit(served.row_prompt("a"), INPUT, GREEDY) for _ in range(40)]  # never admitted
        gate.fail(RuntimeError("broken beyond repair"))
        gate.open()
        for generation in (doomed, *waiting):
            list(generation)  # its stream ends
            assert generation.finish_reason == "error" and "broken beyond repair" in (generation.error or "")
        assert not scheduler.alive and "broken beyond repair" in (scheduler.health() or "")
        with pytest.raises(ServerStoppingError, match="cannot decode"):
            scheduler.submit(served.row_prompt("a"), INPUT, GREEDY)
        assert scheduler.stats() == SchedulerStats(0, 0, 1, 41)
    finally:
        scheduler.shutdown(drain=False)
