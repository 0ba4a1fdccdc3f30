"""OpenAI's completions and chat completions over one :class:`~.service.Service`: what the HTTP routes call.

Both endpoints share one path (resolve the model, encode the input, bound ``max_tokens``, start the run, count the
request); they differ only in how the input is read and how choices, chunks and logprobs are shaped, which is a
:class:`_Format` each. A :class:`Reply` is either a stream of server-sent events or a whole response; the HTTP layer
(:mod:`.app`) only writes it out.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ..errors import PeftExtError
from . import openai_schema as schema
from .http_errors import error_body, http_error, public_message
from .metrics import ServingMetrics
from .sampling import Token
from .service import Choice, Piece, Run, Service


@dataclass
class Reply:
    """What one request gets: its run, shaped by its format, whole or as server-sent events."""

    run: Run
    format: _Format
    meta: dict[str, Any]  # id, created and model: on the response and every chunk
    stream: bool
    include_usage: bool

    async def whole(self) -> BaseModel:
        return self.format.whole(self.meta, await self.run.choices(), _usage(self.run))

    async def events(self) -> AsyncIterator[str]:
        """Server-sent events of the run's pieces; an error after the headers went out becomes an error event."""
        try:
            async for piece in self.run.pieces():
                for chunk in self.format.chunks(self.meta, piece):
                    yield _event(chunk)
            if self.include_usage:
                yield _event(self.format.final(self.meta, _usage(self.run)))
        except PeftExtError as error:
            mapped = http_error(error)
            yield _event(error_body(public_message(str(error)), mapped.type, mapped.param, mapped.code))
        yield "data: [DONE]\n\n"


class OpenAIServing:
    """The serving object behind the routes: ``service`` with its ``metrics``; ``max_tokens_limit`` caps
    ``max_tokens`` (and a chat request that gives none)."""

    def __init__(self, service: Service, metrics: ServingMetrics, max_tokens_limit: int) -> None:
        self.service, self.metrics, self.max_tokens_limit = service, metrics, max_tokens_limit
        self.started = int(time.time())

    async def completions(self, body: schema.CompletionRequest) -> Reply:
        return await self._reply(body, _CompletionFormat(self.service, body))

    async def chat(self, body: schema.ChatCompletionRequest) -> Reply:
        return await self._reply(body, _ChatFormat(self.service, body))

    def models(self) -> schema.ModelList:
        base = self.service.base_name
        return schema.ModelList(
            data=[
                schema.ModelCard(
                    id=card.id,
                    created=self.started,
                    root=base,
                    parent=None if card.kind == "base" else base,
                    version=card.version,
                )
                for card in self.service.registry.cards()
            ]
        )

    async def tokenize(self, body: schema.TokenizeRequest) -> schema.TokenizeResponse:
        body.check()
        if body.model is not None:
            await self.service.resolve(body.model)
        service = self.service
        if body.messages is not None:
            messages = [m.as_template_input() for m in body.messages]
            ids = await run_in_threadpool(service.encode_chat, messages, body.add_generation_prompt)
        else:
            assert body.prompt is not None
            special = True if body.add_special_tokens is None else body.add_special_tokens
            ids = await run_in_threadpool(service.encode_text, body.prompt, special)
        return schema.TokenizeResponse(
            count=len(ids),
            max_model_len=service.context_length,
            tokens=ids,
            token_strs=[service.token_text(i) for i in ids] if body.return_token_strs else None,
        )

    async def detokenize(self, body: schema.DetokenizeRequest) -> schema.DetokenizeResponse:
        if body.model is not None:
            await self.service.resolve(body.model)
        return schema.DetokenizeResponse(prompt=await run_in_threadpool(self.service.decode, body.tokens))

    def tokenizer_info(self) -> dict[str, Any]:
        return self.service.tokenizer_info()

    async def _reply(self, body: schema.CompletionRequest | schema.ChatCompletionRequest, format: _Format) -> Reply:
        body.refuse_unsupported()
        service = self.service
        target = await service.resolve(body.model)
        inputs = await run_in_threadpool(format.inputs)
        max_tokens = service.max_tokens(target, inputs, body.requested_max_tokens(), self.max_tokens_limit)
        run = service.start(
            target,
            inputs,
            body.sampling_params(max_tokens),
            n=body.n,
            stop=body.stop_strings(),
            loop=asyncio.get_running_loop(),
        )
        self.metrics.request(target.name)
        meta = {"id": f"{format.kind}-{uuid.uuid4().hex}", "created": int(time.time()), "model": target.name}
        return Reply(run, format, meta, body.stream, body.include_usage())


class _Format:
    """How one endpoint reads its input and shapes its answers."""

    kind: str

    def __init__(self, service: Service, body: Any) -> None:
        self.service, self.body = service, body

    def inputs(self) -> list[list[int]]:
        raise NotImplementedError

    def whole(self, meta: dict[str, Any], choices: list[Choice], usage: schema.Usage) -> BaseModel:
        raise NotImplementedError

    def chunks(self, meta: dict[str, Any], piece: Piece) -> list[BaseModel]:
        raise NotImplementedError

    def final(self, meta: dict[str, Any], usage: schema.Usage) -> BaseModel:
        raise NotImplementedError

    def token_text(self, token_id: int) -> str:
        return self.service.token_text(token_id)


class _CompletionFormat(_Format):
    """Legacy completions. With ``echo`` each choice's text starts with its prompt (the text given, or the token ids
    decoded), and its logprobs with the prompt's tokens, scored at its prefill (the first one ``null``)."""

    kind = "cmpl"
    body: schema.CompletionRequest

    def __init__(self, service: Service, body: schema.CompletionRequest) -> None:
        super().__init__(service, body)
        self.offsets: dict[int, int] = {}  # streamed: per choice, characters sent so far
        self.echoed: list[str] = []  # with echo: per input, its text

    def inputs(self) -> list[list[int]]:
        """OpenAI's ``prompt``: a text, texts, token ids, or lists of token ids."""
        prompt: Any = self.body.prompt
        service = self.service
        if isinstance(prompt, str):
            texts = [prompt]
        elif all(isinstance(item, str) for item in prompt):
            texts = list(prompt)
        else:
            inputs = [prompt] if all(isinstance(i, int) for i in prompt) else prompt
            ids = [service.token_ids(item) for item in inputs]
            if self.body.echo:
                self.echoed = [service.decode(item) for item in ids]
            return ids
        if self.body.echo:
            self.echoed = texts
        return [service.encode_text(text) for text in texts]

    def _echo(self, index: int) -> str:
        """The text echoed before choice ``index`` (choices ``i * n ... i * n + n - 1`` answer input ``i``)."""
        return self.echoed[index // self.body.n] if self.body.echo else ""

    def whole(self, meta: dict[str, Any], choices: list[Choice], usage: schema.Usage) -> BaseModel:
        return schema.CompletionResponse(
            **meta,
            choices=[
                self._choice(c.index, True, c.text, c.prompt_tokens, c.tokens, c.offsets, c.finish_reason)
                for c in choices
            ],
            usage=usage,
        )

    def chunks(self, meta: dict[str, Any], piece: Piece) -> list[BaseModel]:
        first = piece.index not in self.offsets  # the first piece of a choice carries the echo
        offset = self.offsets.get(piece.index, 0)
        self.offsets[piece.index] = offset + len(piece.text)
        offsets = [offset] * len(piece.tokens)
        choice = self._choice(
            piece.index, first, piece.text, piece.prompt_tokens, piece.tokens, offsets, piece.finish_reason
        )
        return [schema.CompletionResponse(**meta, choices=[choice])]

    def final(self, meta: dict[str, Any], usage: schema.Usage) -> BaseModel:
        return schema.CompletionResponse(**meta, choices=[], usage=usage)

    def _choice(
        self,
        index: int,
        with_echo: bool,
        text: str,
        prompt: Sequence[Token] | None,
        tokens: Sequence[Token],
        offsets: Sequence[int],
        finish_reason: str | None,
    ) -> schema.CompletionChoice:
        """One choice (or a streamed piece of it): ``offsets`` count from the generated text's start, so the echoed
        prompt's length is added to them."""
        echo = self._echo(index)
        return schema.CompletionChoice(
            index=index,
            text=(echo if with_echo else "") + text,
            logprobs=self._logprobs(prompt, tokens, [len(echo) + offset for offset in offsets], len(echo)),
            finish_reason=finish_reason,
        )

    def _logprobs(
        self, prompt: Sequence[Token] | None, tokens: Sequence[Token], offsets: Sequence[int], echoed: int
    ) -> schema.CompletionLogprobs | None:
        """The legacy completions ``logprobs`` object: the echoed prompt's tokens (when asked), then the generated
        ones. A generated token's offset is where the text that came out with it starts in the choice's text (tokens
        whose text was held back together share one); a prompt token's is where its own text starts, counted over
        the prompt's token texts (``echoed`` characters at most)."""
        if self.body.logprobs is None:
            return None
        texts = [self.token_text(t.id) for t in prompt or ()]
        starts = list(itertools.accumulate((len(text) for text in texts[:-1]), initial=0)) if texts else []
        every = [*(prompt or ()), *tokens]
        return schema.CompletionLogprobs(
            tokens=[*texts, *(self.token_text(t.id) for t in tokens)],
            token_logprobs=[t.logprob for t in every],
            top_logprobs=[
                None if t.logprob is None else {self.token_text(i): lp for i, lp in t.top_logprobs} for t in every
            ],
            text_offset=[*(min(start, echoed) for start in starts), *offsets],
        )


class _ChatFormat(_Format):
    kind = "chatcmpl"
    body: schema.ChatCompletionRequest

    def __init__(self, service: Service, body: schema.ChatCompletionRequest) -> None:
        super().__init__(service, body)
        self.greeted: set[int] = set()  # streamed: choices whose first chunk (naming the role) went out

    def inputs(self) -> list[list[int]]:
        return [self.service.encode_chat([m.as_template_input() for m in self.body.messages])]

    def whole(self, meta: dict[str, Any], choices: list[Choice], usage: schema.Usage) -> BaseModel:
        return schema.ChatCompletionResponse(
            **meta,
            choices=[
                schema.ChatChoice(
                    index=c.index,
                    message=schema.AssistantMessage(content=c.text),
                    logprobs=self._logprobs(c.tokens),
                    finish_reason=c.finish_reason,
                )
                for c in choices
            ],
            usage=usage,
        )

    def chunks(self, meta: dict[str, Any], piece: Piece) -> list[BaseModel]:
        chunks: list[BaseModel] = []
        if piece.index not in self.greeted:  # OpenAI's first chunk of a choice names the role
            self.greeted.add(piece.index)
            first = schema.ChatChunkChoice(index=piece.index, delta=schema.Delta(role="assistant", content=""))
            chunks.append(schema.ChatCompletionChunk(**meta, choices=[first]))
        choice = schema.ChatChunkChoice(
            index=piece.index,
            delta=schema.Delta(content=piece.text or None),
            logprobs=self._logprobs(piece.tokens),
            finish_reason=piece.finish_reason,
        )
        chunks.append(schema.ChatCompletionChunk(**meta, choices=[choice]))
        return chunks

    def final(self, meta: dict[str, Any], usage: schema.Usage) -> BaseModel:
        return schema.ChatCompletionChunk(**meta, choices=[], usage=usage)

    def _logprobs(self, tokens: Sequence[Token]) -> schema.ChatLogprobs | None:
        if not self.body.logprobs:
            return None

        def entry(token_id: int, logprob: float | None) -> schema.TopLogprob:
            assert logprob is not None, "a generated token always has its logprob"
            text = self.token_text(token_id)
            return schema.TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

        return schema.ChatLogprobs(
            content=[
                schema.TokenLogprob(
                    **entry(t.id, t.logprob).model_dump(), top_logprobs=[entry(i, lp) for i, lp in t.top_logprobs]
                )
                for t in tokens
            ]
        )


def _usage(run: Run) -> schema.Usage:
    completion = run.completion_tokens
    return schema.Usage(
        prompt_tokens=run.prompt_tokens, completion_tokens=completion, total_tokens=run.prompt_tokens + completion
    )


def _event(payload: BaseModel | dict[str, Any]) -> str:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"
