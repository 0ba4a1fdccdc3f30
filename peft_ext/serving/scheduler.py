"""Continuous batching: one thread decodes every running request together, admitting and retiring rows each step.

Requests wait in a bounded queue (:class:`~peft_ext.errors.ServerBusyError` when it is full). At every step the
scheduler retires finished and cancelled rows, prefills up to ``admit_per_step`` waiting requests into the running
:class:`~peft_ext.engine.decode_batch.DecodeBatch` (each new row is prefilled alone, the others wait one prefill,
never a whole generation), then runs one decoding step for every row. Each request's prompt keys/values come from
the model's prompt KV cache; each row's tokens are those of the request run alone.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine.decode_batch import DecodeBatch
from ..engine.engine import Prompt, PromptEngine
from ..errors import InvalidRequestError, ServerBusyError, ServerStoppingError
from .sampling import SamplingParams, Token, choose

_END = object()
logger = logging.getLogger(__name__)


@dataclass
class Generation:
    """One request's stream of :class:`Token`, ended by its ``finish_reason`` ("stop", "length" or "cancelled")."""

    prompt: Prompt | None
    input_ids: list[int]
    params: SamplingParams
    label: str = ""  # what metrics call the request's prompt
    # Called on the decoding thread with each emitted token; True ends the generation ("stop") at that token, so a
    # stop found in the text costs no further decoding step (see Service: stop strings).
    stop_check: Callable[[Token], bool] | None = None
    finish_reason: str | None = None  # "stop", "length", "cancelled" or "error"
    error: str | None = None  # why, when finish_reason is "error"
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    tokens: list[Token] = field(default_factory=list)
    _events: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    _loop: asyncio.AbstractEventLoop | None = None
    _async_events: asyncio.Queue[Any] | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _cancel_reason: str = "cancelled"

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop generating: the row leaves the batch at the next step and the generation ends with ``reason``
        ("cancelled" when a client went away; "stop" when the caller found a stop string in the text)."""
        self._cancel_reason = reason
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[Token]:
        """Tokens as they come (blocking)."""
        while (event := self._events.get()) is not _END:
            yield event

    async def stream(self) -> AsyncIterator[Token]:
        """Tokens as they come, for the event loop the request was submitted from."""
        assert self._async_events is not None, "submit(..., loop=asyncio.get_running_loop()) to stream asynchronously"
        while (event := await self._async_events.get()) is not _END:
            yield event

    def _emit(self, event: Any) -> None:
        if self._async_events is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._async_events.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                self.cancel()
        else:
            self._events.put(event)


@dataclass(frozen=True)
class SchedulerStats:
    queued: int
    running: int
    tokens_generated: int
    requests_finished: int


class Scheduler:
    """Decodes every submitted :class:`Generation` of one model in a shared, continuously changing batch."""

    def __init__(
        self,
        engine: PromptEngine,
        *,
        eos_token_ids: Sequence[int] = (),
        max_running: int = 32,
        max_queued: int = 256,
        admit_per_step: int = 4,
        on_token: Callable[[Generation, Token], None] | None = None,
        on_finish: Callable[[Generation], None] | None = None,
    ) -> None:
        if max_running < 1 or max_queued < 0 or admit_per_step < 1:
            raise InvalidRequestError("max_running and admit_per_step must be >= 1 and max_queued >= 0.")
        self.engine = engine
        self.eos_token_ids = frozenset(int(i) for i in eos_token_ids)
        self.max_running, self.max_queued, self.admit_per_step = max_running, max_queued, admit_per_step
        self._on_token, self._on_finish = on_token, on_finish
        self._waiting: collections.deque[Generation] = collections.deque()
        self._running: dict[Hashable, tuple[Generation, torch.Generator | None]] = {}
        self._batch = DecodeBatch(engine)
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._accepting = True
        self._stopped = False
        self._dead = False  # the decoding thread died: requests are refused rather than left waiting
        self._tokens = self._finished = 0
        self._thread = threading.Thread(target=self._run, name="peft-ext-scheduler", daemon=True)
        self._thread.start()

    # --- requests ------------------------------------------------------------------------------------------------

    def submit(
        self,
        prompt: Prompt | None,
        input_ids: Sequence[int],
        params: SamplingParams,
        *,
        label: str = "",
        loop: asyncio.AbstractEventLoop | None = None,
        stop_check: Callable[[Token], bool] | None = None,
    ) -> Generation:
        """Queue a request; its tokens arrive on the returned :class:`Generation`."""
        if not input_ids:
            raise InvalidRequestError("The request has no input tokens; send some text.")
        generation = Generation(prompt, [int(i) for i in input_ids], params, label, stop_check=stop_check)
        if loop is not None:
            generation._loop, generation._async_events = loop, asyncio.Queue()
        with self._wake:
            if not self._accepting:
                raise ServerStoppingError("The server is shutting down and takes no new requests.")
            if self._dead:
                raise ServerStoppingError("The decoding thread has stopped (see the server log); restart the server.")
            if len(self._waiting) >= self.max_queued + max(0, self.max_running - len(self._running)):
                raise ServerBusyError(
                    f"{len(self._waiting)} requests are already waiting (limit {self.max_queued}); retry shortly."
                )
            self._waiting.append(generation)
            self._wake.notify()
        return generation

    @property
    def alive(self) -> bool:
        """Whether the decoding thread is running (False after :meth:`shutdown`, or if it died)."""
        return self._thread.is_alive() and not self._dead

    def stats(self) -> SchedulerStats:
        with self._wake:
            return SchedulerStats(len(self._waiting), len(self._running), self._tokens, self._finished)

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Take no new requests; finish the running and waiting ones (``drain``) or cancel them, then stop."""
        with self._wake:
            self._accepting = False
            if not drain:
                for generation in [*self._waiting, *(g for g, _ in self._running.values())]:
                    generation.cancel()
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout)

    # --- the decoding loop -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._waiting and not self._running and not self._stopped:
                        self._wake.wait()
                    if self._stopped and not self._waiting and not self._running:
                        return
                    admitted: list[Generation] = []
                    while self._waiting and len(self._running) + len(admitted) < self.max_running:
                        if len(admitted) == self.admit_per_step:
                            break
                        admitted.append(self._waiting.popleft())
                try:
                    self._step(admitted)
                except Exception as error:  # a failure of the model: end every affected request, keep serving
                    self._fail_all(error, admitted)
        except BaseException as error:  # the loop itself broke: nothing will decode again, so end every request
            logger.exception("The decoding thread stopped")
            self._abandon(error)

    def _step(self, admitted: list[Generation]) -> None:
        for generation in admitted:
            if generation.cancelled:
                self._finish(generation, generation._cancel_reason)
                continue
            new_row = next(self._ids)
            try:
                logits = self._batch.join(new_row, generation.prompt, generation.input_ids)
            except Exception as error:  # this request's prefill failed: end it alone, the running rows go on
                logger.exception("Prefill failed; ending that request")
                generation.error = f"{type(error).__name__}: {error}"
                self._finish(generation, "error")
                continue
            with self._wake:
                self._running[new_row] = (generation, generation.params.generator())
            self._accept(new_row, logits)
        self._retire()
        if self._batch.ids:
            last = [self._running[row][0].tokens[-1].id for row in self._batch.ids]
            logits = self._batch.step(last)
            for row, row_logits in zip(list(self._batch.ids), logits, strict=True):
                self._accept(row, row_logits)
            self._retire()

    def _accept(self, row: Hashable, logits: torch.Tensor) -> None:
        generation, generator = self._running[row]
        if generation.cancelled:
            return
        token = choose(logits, generation.params, generator)
        if generation.first_token_at is None:
            generation.first_token_at = time.perf_counter()
        generation.tokens.append(token)
        self._tokens += 1
        if token.id in self.eos_token_ids | generation.params.stop_token_ids:
            generation.finish_reason = "stop"
            return
        # Decided before the token goes out: whoever reads the last token finds the generation finished.
        if generation.stop_check is not None and generation.stop_check(token):
            generation.finish_reason = "stop"
        elif len(generation.tokens) >= generation.params.max_tokens:
            generation.finish_reason = "length"
        if self._on_token is not None:
            self._on_token(generation, token)
        generation._emit(token)

    def _retire(self) -> None:
        done = [row for row, (g, _) in self._running.items() if g.finish_reason is not None or g.cancelled]
        if not done:
            return
        self._batch.leave(done)
        for row in done:
            with self._wake:
                generation, _ = self._running.pop(row)
            self._finish(generation, generation.finish_reason or generation._cancel_reason)

    def _finish(self, generation: Generation, reason: str) -> None:
        generation.finish_reason = reason
        with self._wake:
            self._finished += 1
        if self._on_finish is not None:  # before the end goes out: a client that saw it finds it counted
            self._on_finish(generation)
        generation._emit(_END)

    def _fail_all(self, error: Exception, admitted: list[Generation]) -> None:
        logger.exception("Decoding step failed; ending the %d running requests", len(self._running))
        rows = list(self._running)
        self._batch.leave(rows)
        for row in rows:
            with self._wake:
                generation, _ = self._running.pop(row)
            generation.error = f"{type(error).__name__}: {error}"
            self._finish(generation, "error")
        for generation in admitted:  # taken from the queue but not yet in the batch when the step failed
            if generation.finish_reason is None:
                generation.error = f"{type(error).__name__}: {error}"
                self._finish(generation, "error")

    def _abandon(self, error: BaseException) -> None:
        with self._wake:
            self._dead = True
            pending = [*self._waiting, *(g for g, _ in self._running.values())]
            self._waiting.clear()
            self._running.clear()
        for generation in pending:
            generation.error = f"The decoding thread stopped ({type(error).__name__}: {error})"
            self._finish(generation, "error")
