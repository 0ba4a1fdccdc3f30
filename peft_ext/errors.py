"""Every named exception of ``peft_ext``.

All derive from :class:`PeftExtError`, so ``except PeftExtError`` catches any user-facing problem; each also derives
from the built-in type a caller would naturally expect (``ValueError``, ``KeyError``, ...), so code written against
plain PEFT keeps working. Messages say what was wrong, with which value, and what to do.
"""

from __future__ import annotations


class PeftExtError(Exception):
    """Base class of every error raised by peft_ext."""


class UnsupportedPeftVersionError(PeftExtError, ImportError):
    """The installed peft is outside the range whose internals peft_ext was tested against."""


class UnknownStrategyError(PeftExtError, ValueError):
    """A strategy field of ``SoftPromptConfig`` (``init``, ``text_length_policy``, ``reparameterization``) names no
    known strategy."""


class InvalidConfigError(PeftExtError, ValueError):
    """A ``SoftPromptConfig`` field has a value that cannot work (missing text, bad anchor count, ...)."""


class EmptyInitTextError(PeftExtError, ValueError):
    """The init text tokenises to no tokens at all."""


class InitTextLengthError(PeftExtError, ValueError):
    """The init text's token count does not fit ``num_virtual_tokens`` under the chosen length policy."""


class TokenizerNotAvailableError(PeftExtError, ValueError):
    """A text or label init needs a tokenizer object or a local tokenizer folder, and none was given."""


class MissingLabelWordsError(PeftExtError, ValueError):
    """A ``labels`` init was asked for without label words, or a label word tokenises to nothing."""


class InvalidRequestError(PeftExtError, ValueError):
    """A call's arguments do not fit together (one adapter name per row, a max_length with no room for new tokens,
    ...)."""


class UnsupportedModelError(PeftExtError, ValueError):
    """The base model or task type is not one peft_ext supports."""


class GradientCheckpointingError(UnsupportedModelError):
    """A deep prompt trained on a model with gradient (activation) checkpointing on: checkpointed layers drop the
    key/value cache a deep prompt enters as (PEFT's prefix tuning refuses it alike)."""


class DeepPromptInputError(InvalidRequestError):
    """A deep prompt's input embeddings were asked for: it has per-layer keys/values only, so it cannot enter a path
    that takes prompts as input embeddings."""


class AdapterNotFoundError(PeftExtError, KeyError):
    """An adapter name (or path) that is not loaded or does not exist."""

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0]) if self.args else ""


class InvalidAdapterError(PeftExtError, ValueError):
    """An adapter folder, or a tensor meant to be a soft prompt, that cannot be used; the subclasses say why."""


class InvalidSourceError(InvalidAdapterError, TypeError):
    """What was given as an adapter is neither an adapter folder (a str or Path) nor a PeftModel."""


class InvalidAdapterConfigError(InvalidAdapterError):
    """An ``adapter_config.json`` that PEFT could not load: missing, not JSON, a field of the wrong type or value."""


class UnsupportedPeftTypeError(InvalidAdapterError):
    """An adapter whose ``peft_type`` is not a soft-prompt method (SOFT_PROMPT, PROMPT_TUNING, P_TUNING; PREFIX_TUNING
    where deep prompts are taken)."""


class DeepPromptNotSupportedError(UnsupportedPeftTypeError):
    """A deep prompt (PREFIX_TUNING: per-layer keys/values) given where only input-level prompts work yet: hub
    sharing, export, the ``adapter`` init, vLLM. ``MultiPromptModel`` serves deep prompts."""


class CorruptAdapterError(InvalidAdapterError):
    """A weights file that is missing or not valid safetensors (corrupt, truncated, inconsistent header)."""


class PickleRefusedError(InvalidAdapterError):
    """A pickle ``.bin`` weights file, refused because unpickling can run code (pass ``allow_pickle=True``)."""


class InvalidPromptTensorError(InvalidAdapterError):
    """A tensor meant to be a soft prompt that is not one; the subclasses name the failure."""


class TensorShapeError(InvalidPromptTensorError):
    """A prompt that is not ``[num_tokens, hidden]``, or whose shape differs from its adapter config."""


class HiddenSizeMismatchError(TensorShapeError):
    """A soft prompt whose width differs from the base model's hidden size: it was trained for another model."""


class KVShapeMismatchError(TensorShapeError):
    """A deep prompt whose layer count, key/value heads or head size differ from the base model's: it was made for
    another model."""


class TensorDtypeError(InvalidPromptTensorError):
    """A tensor whose dtype is not a supported floating-point type (F16, BF16, F32, F64)."""


class NonFiniteTensorError(InvalidPromptTensorError):
    """A soft prompt (or any tensor of an adapter) that contains NaN or Inf."""


class BaseModelLoadError(PeftExtError, OSError):
    """The base model could not be found, converted or loaded."""


class InvalidBaseModelError(PeftExtError, TypeError):
    """A ``base_model`` (or its tokenizer) that is not a loaded model, a ``BaseModelRef`` or its dict form."""


class DatasetError(PeftExtError, ValueError):
    """A training data file that is empty, has no text column, or cannot be decoded."""


class ServerBusyError(PeftExtError, RuntimeError):
    """The server's request queue is full: retry after a moment (HTTP 429 with ``Retry-After``)."""


class ServerStoppingError(PeftExtError, RuntimeError):
    """The server is shutting down and takes no new requests (HTTP 503)."""


class ContextLengthError(InvalidRequestError):
    """A request whose soft prompt, input and ``max_tokens`` together exceed the base model's context length."""


class ChatTemplateError(InvalidRequestError):
    """A chat request to a model whose tokenizer has no chat template, or messages its template cannot render."""


class InvalidModelNameError(InvalidRequestError):
    """A request's ``model`` that can name nothing: too long, or with whitespace or control characters."""


class RequestTooLargeForServerError(InvalidRequestError):
    """A request asking for more generations (prompts x n) than the server can ever hold: a 400 naming the limit,
    never a 429 that a client would retry forever."""


class UnsupportedParameterError(InvalidRequestError):
    """An OpenAI request parameter this server does not implement, set to a value that would change the answer."""


class RequestTooLargeError(PeftExtError, ValueError):
    """A request body over the server's size limit (HTTP 413)."""


class AuthenticationError(PeftExtError, PermissionError):
    """A request without the server's API key, or with a wrong one (HTTP 401). The message never holds a key."""


class GenerationError(PeftExtError, RuntimeError):
    """The model failed while generating a request's tokens: a fault of the server, not of the request (HTTP 500)."""


class ServerBindError(PeftExtError, OSError):
    """The server cannot listen on the host and port asked for (in use, not this machine's, not allowed)."""


class MissingExtraError(PeftExtError, ImportError):
    """A feature whose optional packages are not installed; the message names the extra to install."""


class UnknownTaskError(PeftExtError, KeyError):
    """An evaluation task name that no task folder or installed task defines (``peft-ext eval --tasks``)."""

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0]) if self.args else ""
