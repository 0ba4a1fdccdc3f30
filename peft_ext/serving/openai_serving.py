"""OpenAI's completions and chat completions over one :class:`~.service.Service`: what the HTTP routes call.

Both endpoints share one path (resolve the model, encode the input, bound ``max_tokens``, start the run, count the
request); they differ only in how the input is read and how choices, chunks and logprobs are shaped, which is a
:class:`_Format` each. A :class:`Reply` is either a stream of server-sent events or a whole response; the HTTP layer
(:mod:`.app`) only writes it out.
"""

from __future__ import annotations

import asyncio
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
    kind = "cmpl"
    body: schema.CompletionRequest

    def __init__(self, service: Service, body: schema.CompletionRequest) -> None:
        super().__init__(service, body)
        self.offsets: dict[int, int] = {}  # streamed: per choice, characters sent so far

    def inputs(self) -> list[list[int]]:
        """OpenAI's ``prompt``: a text, texts, token ids, or lists of token ids."""
        prompt: Any = self.body.prompt
        service = self.service
        if isinstance(prompt, str):
            return [service.encode_text(prompt)]
        if all(isinstance(item, str) for item in prompt):
            return [service.encode_text(text) for text in prompt]
        if all(isinstance(item, int) for item in prompt):
            return [service.token_ids(prompt)]
        return [service.token_ids(ids) for ids in prompt]

    def whole(self, meta: dict[str, Any], choices: list[Choice], usage: schema.Usage) -> BaseModel:
        return schema.CompletionResponse(
            **meta,
            choices=[
                schema.CompletionChoice(
                    index=c.index,
                    text=c.text,
                    logprobs=self._logprobs(c.tokens, c.offsets),
                    finish_reason=c.finish_reason,
                )
                for c in choices
            ],
            usage=usage,
        )

    def chunks(self, meta: dict[str, Any], piece: Piece) -> list[BaseModel]:
        offset = self.offsets.get(piece.index, 0)
        self.offsets[piece.index] = offset + len(piece.text)
        choice = schema.CompletionChoice(
            index=piece.index,
            text=piece.text,
            logprobs=self._logprobs(piece.tokens, [offset] * len(piece.tokens)),
            finish_reason=piece.finish_reason,
        )
        return [schema.CompletionResponse(**meta, choices=[choice])]

    def final(self, meta: dict[str, Any], usage: schema.Usage) -> BaseModel:
        return schema.CompletionResponse(**meta, choices=[], usage=usage)

    def _logprobs(self, tokens: Sequence[Token], offsets: Sequence[int]) -> schema.CompletionLogprobs | None:
        """The legacy completions ``logprobs`` object. A token's offset is where the text that came out with it
        starts in the choice's text (tokens whose text was held back together share one)."""
        if self.body.logprobs is None:
            return None
        return schema.CompletionLogprobs(
            tokens=[self.token_text(t.id) for t in tokens],
            token_logprobs=[t.logprob for t in tokens],
            top_logprobs=[{self.token_text(i): lp for i, lp in t.top_logprobs} for t in tokens],
            text_offset=list(offsets),
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

        def entry(token_id: int, logprob: float) -> schema.TopLogprob:
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
