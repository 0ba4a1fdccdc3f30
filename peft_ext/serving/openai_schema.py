"""OpenAI's request and response bodies for /v1/completions, /v1/chat/completions and /v1/models, as pydantic models.

Field names and defaults are OpenAI's. Types are strict (``"5"`` is not a number) and unknown fields are ignored, as
OpenAI does. Parameters this server does not implement are accepted at their neutral value and refused otherwise
(:class:`~peft_ext.errors.UnsupportedParameterError`), never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from ..errors import InvalidRequestError, UnsupportedParameterError
from .sampling import SEED_MAX, SEED_MIN, SamplingParams

MAX_N = 128
MAX_STOP = 16


def _one_of(description: str) -> WrapValidator:
    """One error naming every accepted form, instead of one per member of a union."""

    def validate(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("invalid_type", "Input should be {forms}", {"forms": description}) from None

    return WrapValidator(validate)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    model: Annotated[str, Field(min_length=1)]
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    seed: Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)] | None = None  # torch.Generator's range
    stop: Annotated[
        str | Annotated[list[str], Field(max_length=MAX_STOP)] | None,
        _one_of(f"a string, a list of at most {MAX_STOP} strings, or null"),
    ] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def stop_strings(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def requested_max_tokens(self) -> int | None:
        raise NotImplementedError

    def top_logprobs_count(self) -> int | None:
        """How many alternatives to report per token; None: no logprobs."""
        raise NotImplementedError

    def echoes_prompt(self) -> bool:
        """Whether the prompt's own tokens are scored and sent back before the generated ones (completions' echo)."""
        return False

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        """What this request asks of decoding (OpenAI's defaults: temperature 1, top_p 1)."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            logprobs=self.top_logprobs_count(),
            prompt_logprobs=self.echoes_prompt(),
        )

    def refuse_unsupported(self) -> None:
        """Refuse parameters that would change the answer in a way this server does not implement."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise UnsupportedParameterError(f"{name} is not supported by this server; leave it at 0.")
        if self.logit_bias:
            raise UnsupportedParameterError("logit_bias is not supported by this server; leave it out.")


class CompletionRequest(_Sampling):
    prompt: Annotated[
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)],
        _one_of("a string, a list of strings, a list of token ids, or a list of lists of token ids (none empty)"),
    ]
    echo: bool = False  # before max_tokens: its check reads it
    max_tokens: Annotated[int, Field(ge=0)] | None = 16  # 0: score the echoed prompt only
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("max_tokens")
    @classmethod
    def _zero_only_with_echo(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value == 0 and not info.data.get("echo"):
            raise ValueError("max_tokens 0 generates nothing: it is allowed only with echo (to score the prompt)")
        return value

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def top_logprobs_count(self) -> int | None:
        return self.logprobs

    def echoes_prompt(self) -> bool:
        return self.echo

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.suffix:
            raise UnsupportedParameterError("suffix is not supported by this server; leave it out.")
        if self.best_of is not None and self.best_of != self.n:
            raise UnsupportedParameterError("best_of is not supported by this server; leave it out or equal to n.")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[
        str | list[TextPart] | None, _one_of("a string, a list of text parts {'type': 'text', 'text': ...}, or null")
    ] = None
    name: str | None = None

    def as_template_input(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        message: dict[str, Any] = {"role": self.role, "content": content or ""}
        if self.name is not None:
            message["name"] = self.name
        return message


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def top_logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.tools:
            raise UnsupportedParameterError("tools are not supported by this server; leave them out.")
        if self.response_format is not None and self.response_format.get("type", "text") != "text":
            raise UnsupportedParameterError(
                f"Structured output (response_format {self.response_format.get('type')!r:.40}) is not supported by "
                "this server: only {'type': 'text'}; ask for JSON in the prompt and parse the text instead."
            )
        if self.top_logprobs and not self.logprobs:
            raise UnsupportedParameterError("top_logprobs needs logprobs: true.")


class TokenizeRequest(_Request):
    """vLLM's ``/tokenize``: a ``prompt`` (with the tokenizer's special tokens unless ``add_special_tokens`` is
    false) or chat ``messages`` (through the chat template, ending with the assistant's turn unless
    ``add_generation_prompt`` is false). ``model``, when given, must name a served model."""

    model: Annotated[str, Field(min_length=1)] | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = None  # default: True for a prompt; a chat template writes its own
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("Give either prompt (a text) or messages (a chat) to tokenize, not both.")
        if self.messages is not None and self.add_special_tokens:
            raise UnsupportedParameterError(
                "add_special_tokens with messages is not supported: the chat template writes the special tokens."
            )


class DetokenizeRequest(_Request):
    model: Annotated[str, Field(min_length=1)] | None = None
    tokens: list[int]


# --- responses ----------------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs; an echoed prompt's first token has ``null`` for its logprob and alternatives."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer
    def _set_fields_only(self) -> dict[str, Any]:  # OpenAI's last delta of a choice is {}
        return {name: value for name, value in (("role", self.role), ("content", self.content)) if value is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int | None
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "peft-ext"
    root: str
    parent: str | None = None
    version: str | None = None  # a store version ("1.2.0"); None for the base model and prompts loaded by name


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
