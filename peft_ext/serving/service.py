"""What serves requests, behind the HTTP layer and ``peft-ext generate``: one frozen model, its prompts, one scheduler.

A request names a model (the base, a loaded prompt or a store reference, see :mod:`.prompts`), gives text (or chat
messages, rendered by the tokenizer's chat template) and sampling parameters. The service encodes it, checks that
it fits the model's context, and submits ``n`` generations (seeds ``seed``, ``seed + 1``, ... modulo 2**64) to the
continuous-batching :class:`~.scheduler.Scheduler`, all or none; each generation's text (and its ``stop`` strings)
is made on the decoding thread, where its tokens are. It knows nothing of HTTP; every refusal is a named error from
:mod:`peft_ext.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine.engine import Prompt
from ..errors import ChatTemplateError, ContextLengthError, GenerationError, InvalidRequestError
from ..multi import MultiPromptModel
from .prompts import PromptRegistry
from .sampling import SEED_MAX, SamplingParams, Token
from .scheduler import Generation, Output, Scheduler
from .text import TextStream


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` resolved to: the prompt (None for the base model) and the name it is served as."""

    name: str
    prompt: Prompt | None
    prompt_tokens: int  # virtual tokens the prompt puts before the input


@dataclass
class Piece:
    """Text one choice adds, with the tokens behind it; its last piece carries ``finish_reason``."""

    index: int
    text: str
    tokens: list[Token]
    finish_reason: str | None = None
    prompt_tokens: list[Token] | None = None  # on a choice's first piece: its input's tokens, scored (echo)


@dataclass
class Choice:
    """One choice's whole answer."""

    index: int
    text: str = ""
    tokens: list[Token] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # per token: where the text that came out with it starts
    finish_reason: str | None = None
    prompt_tokens: list[Token] | None = None  # the input's tokens with their logprobs, when asked (echo)


class Service:
    """Serves the soft prompts of one frozen causal LM to many concurrent requests.

    ``model`` and ``tokenizer`` are the base model and its tokenizer, served under ``base_name``. ``store`` is where
    store references (``repo:task@^1.2``) are pulled from (default: the local store); a pulled prompt must have been
    trained on this very model (its :class:`peft_ext.base_ref.BaseModelRef`: what its loader recorded, and the
    fingerprints of its embeddings and tokenizer). ``max_running`` requests decode together; up to ``max_queued``
    more wait. ``step_hook`` is the scheduler's (see :class:`~.scheduler.Scheduler`); ``registry`` options go to
    :class:`~.prompts.PromptRegistry` (its bounds and store-lookup timeout). On the CPU, pack the model's linear
    layers first (:func:`peft_ext.engine.packed_linear.pack_linears`), as ``peft-ext serve`` does: the service leaves
    the caller's model as it is.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        base_name: str = "base",
        store: Any = None,
        max_running: int = 32,
        max_queued: int = 256,
        step_hook: Callable[[int], None] | None = None,
        registry: dict[str, Any] | None = None,
    ) -> None:
        from ..base_ref import BaseModelRef

        base_ref = BaseModelRef.from_model(model, tokenizer)
        self.tokenizer = tokenizer
        self.prompts = MultiPromptModel(model, tokenizer)
        self.registry = PromptRegistry(self.prompts, base_name, store=store, base_ref=base_ref, **(registry or {}))
        self.context_length: int | None = getattr(model.config, "max_position_embeddings", None)
        self.vocab_size = int(model.get_input_embeddings().weight.shape[0])
        self._token_listeners: list[Callable[[Generation, Token], None]] = []
        self._finish_listeners: list[Callable[[Generation], None]] = []
        self.scheduler = Scheduler(
            self.prompts.engine,
            eos_token_ids=sorted(_eos_ids(model, tokenizer)),
            max_running=max_running,
            max_queued=max_queued,
            on_token=self._on_token,
            on_finish=self._on_finish,
            step_hook=step_hook,
        )

    @property
    def base_name(self) -> str:
        return self.registry.base_name

    def add(self, name: str, source: Any) -> str:
        """Serve a prompt under ``name``: an adapter folder, a ``[n, hidden]`` tensor or a store reference."""
        return self.registry.add(name, source)

    def listen(
        self,
        on_token: Callable[[Generation, Token], None] | None = None,
        on_finish: Callable[[Generation], None] | None = None,
    ) -> None:
        """Be called (on the decoding thread) for every emitted token and every finished generation: metrics."""
        if on_token is not None:
            self._token_listeners.append(on_token)
        if on_finish is not None:
            self._finish_listeners.append(on_finish)

    def _on_token(self, generation: Generation, token: Token) -> None:
        for listener in self._token_listeners:
            listener(generation, token)

    def _on_finish(self, generation: Generation) -> None:
        for listener in self._finish_listeners:
            listener(generation)

    # --- requests ------------------------------------------------------------------------------------------------

    def lookup(self, model: str) -> Target:
        """Resolve a request's ``model``; a store reference is pulled and verified on first use (blocking)."""
        return _target(*self.registry.lookup(model))

    async def resolve(self, model: str) -> Target:
        """:meth:`lookup` for the event loop: a known ``model`` answers at once, a store lookup runs on the
        registry's own threads (shared by every request naming that reference) and is awaited at most the
        registry's ``lookup_timeout_s``."""
        found = self.registry.known(model)
        if found is None:
            pending = asyncio.shield(asyncio.wrap_future(self.registry.lookup_reference(model)))
            try:
                exact = await asyncio.wait_for(pending, self.registry.lookup_timeout_s)
            except TimeoutError:
                raise self.registry.timeout(model) from None
            found = self.prompts.row_prompt(exact), exact  # what the lookup just loaded (never waits here)
        return _target(*found)

    def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """A completion prompt's token ids, as ``MultiPromptModel`` encodes text (with the tokenizer's special
        tokens unless ``add_special_tokens`` is false)."""
        encoded = self.tokenizer(_checked_text(text, "prompt"), add_special_tokens=add_special_tokens)
        return [int(i) for i in encoded["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids (checked against the vocabulary) as text, special tokens included."""
        return str(self.tokenizer.decode(self.token_ids(ids), skip_special_tokens=False))

    def tokenizer_info(self) -> dict[str, Any]:
        """What clients need to tokenize as the server does (vLLM's ``/tokenizer_info``): the tokenizer's class,
        special tokens, chat template and the model's context length."""
        tokenizer = self.tokenizer
        info: dict[str, Any] = {"tokenizer_class": type(tokenizer).__name__}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            info[name] = getattr(tokenizer, name, None)
        info["chat_template"] = getattr(tokenizer, "chat_template", None)
        info["model_max_length"] = self.context_length
        return info

    def token_ids(self, ids: Sequence[int]) -> list[int]:
        """Token ids given by a client, refused unless every one is in the model's vocabulary."""
        vocab = self.vocab_size
        wrong = next((i for i in ids if not 0 <= i < vocab), None)
        if wrong is not None:
            raise InvalidRequestError(f"Token id {wrong} is outside the model's vocabulary (0..{vocab - 1}).")
        return [int(i) for i in ids]

    def token_text(self, token_id: int) -> str:
        """One token's own text (special tokens by name), as logprobs report it."""
        return str(self.tokenizer.decode([token_id], skip_special_tokens=False))

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Chat messages through the tokenizer's chat template, ending with the assistant's turn to speak (unless
        ``add_generation_prompt`` is false)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ChatTemplateError(
                f"The model {self.base_name!r} has no chat template (its tokenizer sets none); use /v1/completions."
            )
        for message in messages:
            _checked_text(message.get("content") or "", f"the content of a {message.get('role')!r} message")
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except Exception as error:  # jinja2's TemplateError and whatever a template raises for messages it refuses
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ChatTemplateError(f"The chat template cannot render these messages: {reason}") from None
        # The template writes the special tokens (BOS, role markers) itself.
        return [int(i) for i in self.tokenizer(_checked_text(text, "chat"), add_special_tokens=False)["input_ids"]]

    def max_tokens(self, target: Target, inputs: Sequence[Sequence[int]], requested: int | None, limit: int) -> int:
        """The ``max_tokens`` to run: ``requested`` (at most ``limit``; 0 scores the input without generating), or
        when None all the room the context leaves (at most ``limit``). Raises :class:`ContextLengthError` when the
        longest input leaves too little room."""
        if requested is not None and requested > limit:
            raise InvalidRequestError(f"max_tokens is {requested}; this server allows at most {limit}.")
        longest = max(len(ids) for ids in inputs)
        if not longest:
            raise InvalidRequestError("The request has no input tokens; send some text.")
        if self.context_length is None:
            return requested if requested is not None else limit
        room = self.context_length - target.prompt_tokens - longest
        wanted = requested if requested is not None else min(room, limit)
        least = 0 if requested == 0 else 1  # 0 asked for: the input is only scored
        if wanted < least or wanted > room:
            wanted = max(wanted, least)
            raise ContextLengthError(
                f"This model's maximum context length is {self.context_length} tokens; the request needs "
                f"{target.prompt_tokens + longest + wanted} ({target.prompt_tokens} soft-prompt tokens, "
                f"{longest} input tokens, max_tokens {wanted}). Shorten the input or lower max_tokens."
            )
        return wanted

    def start(
        self,
        target: Target,
        inputs: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        n: int = 1,
        stop: Sequence[str] = (),
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Run:
        """Submit ``n`` generations per input (choice ``i * n + j``; seeds ``seed + j``), all or none: a refusal
        (:class:`~peft_ext.errors.ServerBusyError`, or a request larger than the server holds) queues nothing."""
        if n < 1:
            raise InvalidRequestError(f"n must be at least 1, got {n}.")
        generations = [
            Generation(
                target.prompt,
                list(ids),
                params if params.seed is None else replace(params, seed=(params.seed + j) % (SEED_MAX + 1)),
                target.name,
                text=TextStream(self.tokenizer, ids, stop),
            )
            for ids in inputs
            for j in range(n)
        ]
        self.scheduler.submit_all(generations, loop=loop)
        return Run(generations, prompt_tokens=sum(len(ids) for ids in inputs))

    def generate(
        self, model: str, texts: Iterable[str], params: SamplingParams, *, stop: Sequence[str] = (), limit: int = 4096
    ) -> list[Choice]:
        """One-shot completions (blocking), e.g. for ``peft-ext generate``: one choice per text."""
        target = self.lookup(model)
        inputs = [self.encode_text(text) for text in texts]
        params = replace(params, max_tokens=self.max_tokens(target, inputs, params.max_tokens, limit))
        return self.start(target, inputs, params, stop=stop).wait()

    def health(self) -> str | None:
        """None while requests are decoded; otherwise why not (shutting down, or the failure that stopped it)."""
        return self.scheduler.health()

    def healthy(self) -> bool:
        return self.health() is None

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Take no new requests; finish the running and waiting ones (``drain``) or cancel them."""
        self.scheduler.shutdown(drain=drain, timeout=timeout)
        self.registry.close()


class Run:
    """The generations of one request, as text pieces (streamed) or whole choices."""

    def __init__(self, generations: list[Generation], prompt_tokens: int) -> None:
        self.generations = generations
        self._choices = [_ChoiceText(index, g) for index, g in enumerate(generations)]
        self.prompt_tokens = prompt_tokens

    @property
    def completion_tokens(self) -> int:
        """Tokens generated for the choices' answers (an end-of-sequence or stop-string token counts)."""
        return sum(len(g.tokens) for g in self.generations)

    def cancel(self) -> None:
        for generation in self.generations:
            if generation.finish_reason is None:
                generation.cancel()

    async def pieces(self) -> AsyncIterator[Piece]:
        """Every choice's pieces as they come (choices interleaved). Leaving early cancels what still runs."""
        queue: asyncio.Queue[Piece | BaseException] = asyncio.Queue()

        async def follow(choice: _ChoiceText) -> None:
            try:
                async for output in choice.generation.stream():
                    piece = choice.feed(output)
                    if piece is not None:
                        queue.put_nowait(piece)
                queue.put_nowait(choice.end())
            except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
                queue.put_nowait(error)

        tasks = [asyncio.ensure_future(follow(choice)) for choice in self._choices]
        try:
            remaining = len(self._choices)
            while remaining:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    remaining -= 1
                yield item
        finally:
            self.cancel()
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def choices(self) -> list[Choice]:
        """Every choice once all have finished."""
        choices = [Choice(c.index) for c in self._choices]
        async for piece in self.pieces():
            _append(choices[piece.index], piece)
        return choices

    def wait(self) -> list[Choice]:
        """Every choice, blocking (for a run started without an event loop)."""
        choices = []
        for choice in self._choices:
            whole = Choice(choice.index)
            for output in choice.generation:
                piece = choice.feed(output)
                if piece is not None:
                    _append(whole, piece)
            _append(whole, choice.end())
            choices.append(whole)
        return choices


class _ChoiceText:
    """One generation's outputs grouped into pieces: a piece when text comes out (with the tokens behind it), the
    last one with the finish reason and the text held back until the end."""

    def __init__(self, index: int, generation: Generation) -> None:
        self.index, self.generation = index, generation
        self._pending: list[Token] = []
        self._started = False

    def feed(self, output: Output) -> Piece | None:
        self._pending.append(output.token)
        if not output.text:
            return None
        tokens, self._pending = self._pending, []
        return self._piece(output.text, tokens)

    def end(self) -> Piece:
        generation = self.generation
        if generation.finish_reason == "error":
            raise GenerationError(f"Generation failed on the server: {generation.error}")
        tokens, self._pending = self._pending, []
        return self._piece(generation.tail, tokens, generation.finish_reason or "cancelled")

    def _piece(self, text: str, tokens: list[Token], finish_reason: str | None = None) -> Piece:
        """The first piece carries the scored input (set before the generation emitted anything)."""
        scored = None if self._started else self.generation.prompt_tokens
        self._started = True
        return Piece(self.index, text, tokens, finish_reason, scored)


def _target(prompt: Prompt | None, name: str) -> Target:
    return Target(name, prompt, 0 if prompt is None else prompt.num_tokens())


def _checked_text(text: str, what: str) -> str:
    """``text``, refused when it cannot be encoded as UTF-8 (a lone UTF-16 surrogate, valid in JSON)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidRequestError(
            f"{what} contains {error.object[error.start : error.end]!r} at position {error.start}, a lone UTF-16 "
            "surrogate that is not text; send valid Unicode."
        ) from None
    return text


def _append(choice: Choice, piece: Piece) -> None:
    if piece.prompt_tokens is not None:
        choice.prompt_tokens = piece.prompt_tokens
    choice.offsets.extend([len(choice.text)] * len(piece.tokens))
    choice.text += piece.text
    choice.tokens.extend(piece.tokens)
    choice.finish_reason = piece.finish_reason or choice.finish_reason


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Tokens that end a generation: the generation config's EOS (one or several) and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [] if configured is None else [configured])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return {int(i) for i in ids}
