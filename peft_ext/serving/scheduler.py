"""Continuous batching: one thread decodes every running request together, admitting and retiring rows each step.

Requests wait in a bounded queue. At every step the scheduler retires finished and cancelled rows, admits up to
``admit_per_step`` waiting requests, and prefills the admitted requests together into the running
:class:`~peft_ext.engine.decode_batch.DecodeBatch`, each input in chunks of ``prefill_chunk_tokens``, the next chunk
of every request not yet decoding at each step, about ``prefill_tokens_per_step`` tokens in all (new requests wait
while the chunks under way fill it). So the running rows wait one chunk per step, never a whole long input nor a
whole generation. Then it runs one decoding step for every row. Each request's prompt keys/values come from the
model's prompt KV cache; each row's tokens are those of the request run alone.

Failure isolation is the scheduler's contract, not a list of cases:

- everything about a request that can be refused (its sampling fields, its random generator, room in the queue) is
  checked in :meth:`Scheduler.submit`, before anything is queued: a request is queued whole or not at all;
- what can fail for one request once it runs (its prefill, choosing or decoding its token, its text) ends that
  request alone, with ``finish_reason`` "error" (a prefill of several requests that fails runs again one request at
  a time, so that only the one that fails alone ends); a row enters the running batch and the scheduler's books
  together, so no failure leaves one without the other;
- a decoding step that fails for a reason no request explains (the model itself) ends every request with the reason,
  and the scheduler stops accepting: :meth:`Scheduler.health` says why (``/health`` answers 503) until restarted.

``step_hook`` is the seam for tests and instrumentation: it is called on the decoding thread before every decoding
step with the number of rows about to decode (after that step's admissions and prefills), so a test can hold the
scheduler while requests are provably mid-generation, without touching its internals.
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

from ..engine.decode_batch import CHUNK_TOKENS, DecodeBatch, Joining
from ..engine.engine import Prompt, PromptEngine
from ..errors import InvalidRequestError, RequestTooLargeForServerError, ServerBusyError, ServerStoppingError
from .sampling import SamplingParams, Token, choose, score
from .text import TextStream

_END = object()
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    """One generated token and the text it releases ("" while the text is held back)."""

    token: Token
    text: str


@dataclass
class Generation:
    """One request's stream of :class:`Output`, ended by its ``finish_reason`` ("stop", "length", "cancelled" or
    "error"). With ``text``, the decoding thread turns each token into text as it is made, and a ``stop`` string in
    the text ends the generation at that token (it costs no further decoding step). With ``params.prompt_logprobs``,
    :attr:`prompt_tokens` holds the input's own tokens with their log-probabilities before anything is emitted."""

    prompt: Prompt | None
    input_ids: list[int]
    params: SamplingParams
    label: str = ""  # what metrics call the request's prompt
    text: TextStream | None = None
    finish_reason: str | None = None
    error: str | None = None  # why, when finish_reason is "error"
    tail: str = ""  # text held back until the end (an incomplete character, a possible stop string's start)
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    tokens: list[Token] = field(default_factory=list)
    prompt_tokens: list[Token] | None = None  # the input's own tokens, scored, when params.prompt_logprobs
    generator: torch.Generator | None = None
    _events: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    _loop: asyncio.AbstractEventLoop | None = None
    _async_events: asyncio.Queue[Any] | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _cancel_reason: str = "cancelled"

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop generating: the row leaves the batch at the next step and the generation ends with ``reason``."""
        self._cancel_reason = reason
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[Output]:
        """Outputs as they come (blocking)."""
        while (event := self._events.get()) is not _END:
            yield event

    async def stream(self) -> AsyncIterator[Output]:
        """Outputs as they come, for the event loop the request was submitted from."""
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
        admit_per_step: int = 16,
        prefill_tokens_per_step: int = 512,
        prefill_chunk_tokens: int = CHUNK_TOKENS,
        on_token: Callable[[Generation, Token], None] | None = None,
        on_finish: Callable[[Generation], None] | None = None,
        step_hook: Callable[[int], None] | None = None,
    ) -> None:
        if min(max_running, admit_per_step, prefill_tokens_per_step, prefill_chunk_tokens) < 1 or max_queued < 0:
            raise InvalidRequestError(
                "max_running, admit_per_step, prefill_tokens_per_step and prefill_chunk_tokens must be >= 1 and "
                "max_queued >= 0."
            )
        self.engine = engine
        self.eos_token_ids = frozenset(int(i) for i in eos_token_ids)
        self.max_running, self.max_queued, self.admit_per_step = max_running, max_queued, admit_per_step
        self.prefill_tokens_per_step, self.prefill_chunk_tokens = prefill_tokens_per_step, prefill_chunk_tokens
        self._on_token, self._on_finish, self._step_hook = on_token, on_finish, step_hook
        self._waiting: collections.deque[Generation] = collections.deque()
        self._running: dict[Hashable, Generation] = {}  # exactly the rows of the batch and those prefilled in part
        self._batch = DecodeBatch(engine)
        self._ids = itertools.count()
        self._lock = threading.Condition()
        self._accepting = True
        self._stopped = False
        self._failure: str | None = None  # why the scheduler stopped decoding (it then accepts nothing)
        self._admitting: list[Generation] = []  # taken from the queue this step, not yet in the batch
        self._tokens = self._finished = 0
        self._thread = threading.Thread(target=self._run, name="peft-ext-scheduler", daemon=True)
        self._thread.start()

    @property
    def capacity(self) -> int:
        """The most generations one request may ask for: all running and all queued slots."""
        return self.max_running + self.max_queued

    # --- requests ------------------------------------------------------------------------------------------------

    def submit(
        self,
        prompt: Prompt | None,
        input_ids: Sequence[int],
        params: SamplingParams,
        *,
        label: str = "",
        loop: asyncio.AbstractEventLoop | None = None,
        text: TextStream | None = None,
    ) -> Generation:
        """Queue one generation; its outputs arrive on the returned :class:`Generation`."""
        generation = Generation(prompt, [int(i) for i in input_ids], params, label, text=text)
        self.submit_all([generation], loop=loop)
        return generation

    def submit_all(self, generations: Sequence[Generation], *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Queue the generations of one request, all or none. A request larger than the server can ever hold is
        refused (:class:`RequestTooLargeForServerError`, naming the limit); one that does not fit now is
        :class:`ServerBusyError`."""
        if len(generations) > self.capacity:
            raise RequestTooLargeForServerError(
                f"The request asks for {len(generations)} generations; this server runs {self.max_running} and "
                f"queues {self.max_queued}, so one request may ask for at most {self.capacity} (prompts x n)."
            )
        for generation in generations:
            if not generation.input_ids:
                raise InvalidRequestError("The request has no input tokens; send some text.")
            generation.generator = _generator(generation.params)
            if loop is not None:
                generation._loop, generation._async_events = loop, asyncio.Queue()
        with self._lock:
            if self._failure is not None:
                raise ServerStoppingError(f"The server cannot decode ({self._failure}); restart it.")
            if not self._accepting:
                raise ServerStoppingError("The server is shutting down and takes no new requests.")
            room = self.max_queued + max(0, self.max_running - len(self._running)) - len(self._waiting)
            if len(generations) > room:
                raise ServerBusyError(
                    f"The server is at capacity ({len(self._running)} running, {len(self._waiting)} waiting; room "
                    f"for {max(room, 0)} more generations, this request needs {len(generations)}); retry shortly."
                )
            self._waiting.extend(generations)
            self._lock.notify()

    def health(self) -> str | None:
        """None while requests are decoded; otherwise why not (stopping, or the failure that stopped decoding)."""
        with self._lock:
            if self._failure is not None:
                return self._failure
            if not self._accepting:
                return "shutting down"
        return None if self._thread.is_alive() else "the decoding thread is not running"

    @property
    def alive(self) -> bool:
        """Whether requests are decoded (False after :meth:`shutdown`, or after a failure no request explains)."""
        return self.health() is None

    def stats(self) -> SchedulerStats:
        with self._lock:
            return SchedulerStats(len(self._waiting), len(self._running), self._tokens, self._finished)

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Take no new requests; finish the running and waiting ones (``drain``) or cancel them, then stop."""
        with self._lock:
            self._accepting = False
            if not drain:
                for generation in [*self._waiting, *self._running.values()]:
                    generation.cancel()
            self._stopped = True
            self._lock.notify()
        self._thread.join(timeout)

    # --- the decoding loop -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (admitted := self._next_admissions()) is not None:
                self._admit_all(admitted)
                self._retire()
                if self._batch.ids:
                    if self._step_hook is not None:
                        self._step_hook(len(self._batch))
                    self._decode()
                    self._retire()
        except BaseException as error:  # noqa: BLE001 - the model or the loop failed: nothing decodes any more
            logger.exception("The decoding step failed; the server stops decoding")
            self._stop_decoding(error)

    def _next_admissions(self) -> list[Generation] | None:
        """The waiting requests to prefill this step (waiting for work); None once stopped and drained. The list is
        :attr:`_admitting`, which :meth:`_stop_decoding` ends too."""
        with self._lock:
            while not self._waiting and not self._running and not self._stopped:
                self._lock.wait()
            if self._stopped and not self._waiting and not self._running:
                return None
            admitted: list[Generation] = []
            chunk = self.prefill_chunk_tokens
            continuing = [self._running[row] for row in self._batch.prefilling if row in self._running]
            tokens = sum(min(chunk, len(g.input_ids)) for g in continuing)  # their next chunks run first
            while self._waiting and len(self._running) + len(admitted) < self.max_running:
                tokens += min(chunk, len(self._waiting[0].input_ids))
                busy = admitted or continuing
                if len(admitted) == self.admit_per_step or (busy and tokens > self.prefill_tokens_per_step):
                    break
                admitted.append(self._waiting.popleft())
            self._admitting = admitted
            return admitted

    def _admit_all(self, admitted: list[Generation]) -> None:
        """Book the admitted requests as running, then run the next prefill chunk of every running request not yet
        decoding, all together (one at a time if that fails, so that only a request whose own prefill fails ends).
        A request whose input is then done joins the batch and gets its first token. Each admitted request stays in
        ``admitted`` until booked or ended: a failure of the loop itself still ends it."""
        while admitted:
            generation = admitted[0]
            if generation.cancelled:
                self._finish(generation, generation._cancel_reason)
            elif generation.params.prompt_logprobs and generation.params.max_tokens == 0:
                self._score_only(generation)
            else:
                with self._lock:
                    self._running[next(self._ids)] = generation
            admitted.pop(0)
        decoding = set(self._batch.ids)
        rows = [
            Joining(row, g.prompt, g.input_ids, g.params.prompt_logprobs)
            for row, g in self._running.items()
            if row not in decoding and g.finish_reason is None and not g.cancelled
        ]
        if not rows:
            return
        try:
            results = self._batch.prefill(rows, self.prefill_chunk_tokens)
        except Exception:  # noqa: BLE001 - found out below, one request at a time
            logger.info("Prefilling %d requests together failed; prefilling them one at a time", len(rows))
            self._batch.leave([row.row_id for row in rows if row.row_id in self._batch.ids])
            results = [self._prefill_alone(row) for row in rows]
        for row, logits in zip(rows, results, strict=True):
            if logits is not None:
                self._first_token(self._running[row.row_id], logits)

    def _prefill_alone(self, row: Joining) -> torch.Tensor | None:
        """The next prefill chunk of one request; a failure ends that request alone (it leaves at the next
        retirement)."""
        try:
            return self._batch.prefill([row], self.prefill_chunk_tokens)[0]
        except Exception as error:
            logger.exception("Prefill failed; ending that request")
            self._batch.forget([row.row_id])
            generation = self._running[row.row_id]
            generation.error, generation.finish_reason = _reason(error), "error"
            return None

    def _score_only(self, generation: Generation) -> None:
        """A request that only scores its input (``max_tokens`` 0): one prefill that never joins the batch."""
        try:
            logits = self._batch.score(generation.prompt, generation.input_ids)
            generation.prompt_tokens = score(logits, generation.input_ids, generation.params)
        except Exception as error:
            logger.exception("Scoring the input failed; ending that request")
            self._finish(generation, "error", error)
            return
        self._finish(generation, "length")

    def _first_token(self, generation: Generation, logits: torch.Tensor) -> None:
        """A request whose row joined the batch: score its input if asked, and choose its first token."""
        params, input_ids = generation.params, generation.input_ids
        if params.prompt_logprobs:
            try:
                generation.prompt_tokens = score(logits, input_ids, params)
            except Exception as error:  # the row is in the batch and the books: it leaves at the next retirement
                logger.exception("Scoring the input failed; ending that request")
                generation.error, generation.finish_reason = _reason(error), "error"
                return
            logits = logits[-1]
        self._accept(generation, logits)

    def _decode(self) -> None:
        rows = list(self._batch.ids)
        logits = self._batch.step([self._running[row].tokens[-1].id for row in rows])
        for row, row_logits in zip(rows, logits, strict=True):
            self._accept(self._running[row], row_logits)

    def _accept(self, generation: Generation, logits: torch.Tensor) -> None:
        """Choose a row's next token and send it out; a failure here ends that row alone."""
        if generation.cancelled:
            return
        try:
            token = choose(logits, generation.params, generation.generator)
            if generation.first_token_at is None:
                generation.first_token_at = time.perf_counter()
            generation.tokens.append(token)
            self._tokens += 1
            if token.id in self.eos_token_ids | generation.params.stop_token_ids:
                generation.finish_reason = "stop"
                return
            text = "" if generation.text is None else generation.text.push(token.id)
            # Decided before the token goes out: whoever reads the last token finds the generation finished.
            if generation.text is not None and generation.text.stopped:
                generation.finish_reason = "stop"
            elif len(generation.tokens) >= generation.params.max_tokens:
                generation.finish_reason = "length"
        except Exception as error:
            logger.exception("Choosing a token failed; ending that request")
            generation.error, generation.finish_reason = _reason(error), "error"
            return
        if self._on_token is not None:
            try:
                self._on_token(generation, token)
            except Exception:  # noqa: BLE001 - a listener's failure (metrics) is not the request's
                logger.exception("A token listener failed")
        generation._emit(Output(token, text))

    def _retire(self) -> None:
        done = [row for row, g in self._running.items() if g.finish_reason is not None or g.cancelled]
        if not done:
            return
        self._batch.leave(done)
        self._batch.forget(done)  # rows prefilled in part
        with self._lock:
            retired = [self._running.pop(row) for row in done]
        for generation in retired:
            self._finish(generation, generation.finish_reason or generation._cancel_reason)

    def _finish(self, generation: Generation, reason: str, error: BaseException | None = None) -> None:
        generation.finish_reason = reason
        if error is not None:
            generation.error = _reason(error)
        if reason != "error" and generation.text is not None:
            try:
                generation.tail = generation.text.finish()
            except Exception as failure:  # noqa: BLE001 - this request's text alone
                generation.finish_reason, generation.error = "error", _reason(failure)
        with self._lock:
            self._finished += 1
        if self._on_finish is not None:  # before the end goes out: a client that saw it finds it counted
            try:
                self._on_finish(generation)
            except Exception:  # noqa: BLE001 - a listener's failure is not the request's
                logger.exception("A finish listener failed")
        generation._emit(_END)

    def _stop_decoding(self, error: BaseException) -> None:
        """After a failure no request explains: accept nothing, end every request with the reason."""
        reason = f"the decoding step failed: {_reason(error)}"
        with self._lock:
            self._failure = reason
            everyone = [*self._admitting, *self._waiting, *self._running.values()]
            pending = list({id(g): g for g in everyone}.values())  # one admitted may already be running
            self._admitting, self._waiting, self._running = [], collections.deque(), {}
            self._batch = DecodeBatch(self.engine)  # the failed batch's keys/values are let go
        for generation in pending:
            generation.error = reason
            try:
                self._finish(generation, "error")
            except Exception:  # noqa: BLE001 - every other request must still be ended
                logger.exception("Ending a request failed")


def _generator(params: SamplingParams) -> torch.Generator | None:
    try:
        return params.generator()
    except (ValueError, RuntimeError, OverflowError) as error:
        raise InvalidRequestError(f"The request's seed cannot start a random generator: {error}.") from None


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
