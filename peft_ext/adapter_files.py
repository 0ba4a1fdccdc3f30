"""The one reader of adapter folders: everything that takes a saved soft prompt (``MultiPromptModel.add``, export,
the ``adapter`` init, ``hub`` push, pull and diff) reads it through :func:`read_adapter_folder`.

A folder is read into memory once, so the bytes that are validated are the bytes that get used, hashed or stored: a
file changing under us cannot slip through. Only PEFT's own files are read: ``CONFIG_NAME`` and
``SAFETENSORS_WEIGHTS_NAME`` (a pickle ``WEIGHTS_NAME`` is converted to safetensors only when explicitly allowed).

The config is checked the way PEFT will load it: strict JSON, a ``peft_type`` that is a soft-prompt method, PEFT's
own config class built from it (``PeftConfig.from_peft_type``, as ``PeftModel.from_pretrained`` does), and every
field present checked against that class's type annotations (PEFT itself does not check them, so ``"4"`` or ``4.0``
for ``num_virtual_tokens`` would load and fail later). The weights are parsed by safetensors itself (header,
offsets, truncation), then refused unless every dtype is floating point (read from the header before any tensor is
built, so a dtype torch cannot represent is refused by name), every value finite, and ``prompt_embeddings`` of the
shape the config says.

A folder holds one of two kinds of prompt (:class:`PromptKind`): an input-level prompt (SOFT_PROMPT, PROMPT_TUNING,
P_TUNING: ``[n, hidden]`` input embeddings) or a deep prompt (SOFT_PROMPT with ``placement: "deep"``, or PEFT's
PREFIX_TUNING: keys/values in every layer, ``[n, num_layers * 2 * kv_heads * head_dim]``, read as a
:class:`DeepPrompt`). Deep prompts are read only by the readers that take them (``deep=True``: ``MultiPromptModel``,
the server, ``hub``, the ``adapter`` init); the others (export to PROMPT_TUNING, vLLM) refuse one with
:class:`DeepPromptNotSupportedError`.

Where a prompt comes from is decided here too (:func:`load_soft_prompt`): a ``[num_virtual_tokens, hidden]`` float
tensor is read from an adapter folder, taken from a ``PeftModel``'s adapter, or given directly (:func:`load_prompt`
takes deep prompts too), and :func:`check_prompt_tensor` / :func:`check_deep_prompt` say whether it fits a model;
:func:`pad_token_id` and :func:`pad_texts` pad the texts that follow a prompt.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from safetensors import SafetensorError, deserialize
from safetensors.torch import load

from . import strict_json
from .errors import (
    CorruptAdapterError,
    DeepPromptNotSupportedError,
    HiddenSizeMismatchError,
    InvalidAdapterConfigError,
    InvalidAdapterError,
    InvalidRequestError,
    InvalidSourceError,
    KVShapeMismatchError,
    NonFiniteTensorError,
    PickleRefusedError,
    TensorDtypeError,
    TensorShapeError,
    UnsupportedPeftTypeError,
)
from .integration import (
    DEEP_PROMPT_TYPE_NAMES,
    INPUT_PROMPT_TYPE_NAMES,
    active_adapter,
    adapter_deep_values,
    adapter_prompt,
    is_deep_prompt,
)

PROMPT_KEY = "prompt_embeddings"  # the tensor PEFT saves for a prompt that enters as input embeddings
ADAPTER_FILES = (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME)  # what a soft prompt is stored as: nothing else
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

# Fields whose value the weights' shape depends on: positive integers (PEFT's annotations say ``int``; bool is out).
_POSITIVE_INTS = (
    "num_virtual_tokens",
    "token_dim",
    "num_transformer_submodules",
    "num_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)
_REQUIRED = ("num_virtual_tokens", "token_dim")


class PromptKind(enum.StrEnum):
    """Where a prompt's virtual tokens live."""

    INPUT = "input"  # the input embeddings: the model computes their keys/values (SOFT_PROMPT, PROMPT_TUNING, P_TUNING)
    DEEP = "deep"  # every layer's keys/values, given directly (PEFT's PREFIX_TUNING)


KINDS = {
    **dict.fromkeys(INPUT_PROMPT_TYPE_NAMES, PromptKind.INPUT),
    **dict.fromkeys(DEEP_PROMPT_TYPE_NAMES, PromptKind.DEEP),
}
# The config fields that give a deep prompt's key/value heads and head size: PREFIX_TUNING's token_dim is one
# layer's keys (heads x head size); SOFT_PROMPT keeps token_dim as the hidden size and records the two.
_DEEP_HEADS = {"PREFIX_TUNING": "num_attention_heads", "SOFT_PROMPT": "num_key_value_heads"}
_REQUIRED_DEEP = {
    "PREFIX_TUNING": ("num_layers", "num_attention_heads"),
    "SOFT_PROMPT": ("num_layers", "num_key_value_heads", "head_dim"),
}


DEEP_LAYOUT_FIELDS = ("num_layers", "num_key_value_heads", "head_dim")  # what deep_layout returns, by name


_PLACED_TYPE_NAMES = ("SOFT_PROMPT",)  # types whose ``placement`` field chooses the kind


def prompt_kind(config: dict[str, Any]) -> PromptKind:
    """Which kind of prompt an ``adapter_config.json`` of a prompt method describes (a SOFT_PROMPT's ``placement``
    says)."""
    peft_type = config.get("peft_type")
    if peft_type in _PLACED_TYPE_NAMES and config.get("placement") == PromptKind.DEEP.value:
        return PromptKind.DEEP
    return KINDS.get(peft_type, PromptKind.INPUT) if isinstance(peft_type, str) else PromptKind.INPUT


def deep_layout(config: dict[str, Any]) -> tuple[int, int, int]:
    """A deep prompt's (layers, key/value heads, head size) from its checked ``adapter_config.json``."""
    heads = int(config[_DEEP_HEADS[config["peft_type"]]])
    head_dim = config.get("head_dim") or int(config["token_dim"]) // heads
    return int(config["num_layers"]), heads, int(head_dim)


@dataclass(frozen=True)
class DeepPrompt:
    """A deep prompt: keys/values of ``num_tokens`` virtual tokens in every layer, in PEFT's PREFIX_TUNING layout.

    ``values`` is ``[n, num_layers * 2 * num_heads * head_dim]``: per token, layer 0's keys, layer 0's values, layer
    1's keys, ... (``num_heads`` key/value heads of ``head_dim`` each). Keys are stored as the layers use them (on RoPE
    models already rotated, for a prompt at positions 0..n-1), so they enter a cache as they are and the text that
    follows starts at position n.
    """

    values: torch.Tensor
    num_layers: int
    num_heads: int

    @property
    def num_tokens(self) -> int:
        return int(self.values.shape[0])

    @property
    def head_dim(self) -> int:
        return int(self.values.shape[1]) // (2 * self.num_layers * self.num_heads)

    def layer_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer: keys and values ``[1, num_heads, n, head_dim]``, views of ``values`` split as PEFT's
        ``get_prompt`` does (``view(...).permute([2, 0, 3, 1, 4])``: layer l's keys at 2l, values at 2l + 1)."""
        n = self.num_tokens
        split = self.values.view(1, n, 2 * self.num_layers, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return [(split[2 * layer], split[2 * layer + 1]) for layer in range(self.num_layers)]

    @classmethod
    def from_layer_kv(cls, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> DeepPrompt:
        """The inverse of :meth:`layer_kv`: per-layer keys/values ``[1, heads, n, head_dim]`` in one tensor."""
        stacked = torch.stack([t for keys_values in layers for t in keys_values])  # [2L, 1, heads, n, head_dim]
        two_layers, _, heads, n, head_dim = stacked.shape
        values = stacked.permute(1, 3, 0, 2, 4).reshape(n, two_layers * heads * head_dim).contiguous()
        return cls(values, two_layers // 2, heads)

    def to(self, device: torch.device, dtype: torch.dtype) -> DeepPrompt:
        values = self.values.detach().to(device=device, dtype=dtype).contiguous()
        return DeepPrompt(values, self.num_layers, self.num_heads)


@dataclass(frozen=True)
class AdapterFiles:
    """A validated soft-prompt adapter: its files (PEFT file name -> bytes), its config, its final prompt as saved,
    and which kind of prompt that is."""

    files: dict[str, bytes]
    config: dict[str, Any]
    prompt: torch.Tensor  # input-level: [num_virtual_tokens, token_dim]; deep: [n, layers * 2 * heads * head_dim]
    kind: PromptKind = PromptKind.INPUT

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.prompt.shape[0])

    @property
    def token_dim(self) -> int:
        """``token_dim`` as the config says: the hidden size, except for PREFIX_TUNING (one layer's keys)."""
        return int(self.config["token_dim"]) if self.kind is PromptKind.DEEP else int(self.prompt.shape[1])

    @property
    def hidden_size(self) -> int | None:
        """The base model's hidden size as the adapter records it (a PREFIX_TUNING adapter records none)."""
        return None if self.config["peft_type"] in DEEP_PROMPT_TYPE_NAMES else int(self.config["token_dim"])

    def loaded(self) -> torch.Tensor | DeepPrompt:
        """The prompt as a model takes it: the ``[n, hidden]`` tensor, or a :class:`DeepPrompt`."""
        if self.kind is PromptKind.DEEP:
            layers, heads, _ = deep_layout(self.config)
            return DeepPrompt(self.prompt, layers, heads)
        return self.prompt


def folder_path(source: object) -> Path:
    """``source`` as a folder path, or :class:`InvalidSourceError` if it is not a path at all."""
    if isinstance(source, (str, os.PathLike)) and not isinstance(source, bytes):
        path = os.fspath(source)
        if isinstance(path, str):
            return Path(path)
    raise InvalidSourceError(
        f"An adapter must be given as a folder (a str or Path) or a PeftModel, got {type(source).__name__} "
        f"{_short(source)}."
    )


def read_adapter_folder(
    folder: str | os.PathLike[str], *, allow_pickle: bool = False, deep: bool = False
) -> AdapterFiles:
    """Read and validate a PEFT soft-prompt adapter folder; raise a named :class:`InvalidAdapterError` if unusable.

    Deep prompts (PREFIX_TUNING) are read only with ``deep=True``; otherwise they are refused with
    :class:`DeepPromptNotSupportedError` before anything else of them is read.
    """
    folder = folder_path(folder)
    if not folder.is_dir():
        raise InvalidAdapterError(f"Adapter folder {str(folder)!r} does not exist or is not a directory.")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise InvalidAdapterConfigError(
            f"{str(folder)!r} has no {CONFIG_NAME} file: not a PEFT adapter folder (save it with save_pretrained)."
        )
    config_bytes = _read(config_path)
    config = check_config(config_bytes, str(config_path), deep=deep)
    weights_path = folder / SAFETENSORS_WEIGHTS_NAME
    if weights_path.is_file():
        weights = _read(weights_path)
    elif (folder / WEIGHTS_NAME).is_file():
        weights = _convert_pickle(folder / WEIGHTS_NAME, allow_pickle)
    else:
        raise CorruptAdapterError(
            f"{str(folder)!r} has no {SAFETENSORS_WEIGHTS_NAME} file; save the adapter with save_pretrained."
        )
    tensors = check_weights(weights, config, str(weights_path))
    files = {CONFIG_NAME: config_bytes, SAFETENSORS_WEIGHTS_NAME: weights}
    return AdapterFiles(files, config, tensors[PROMPT_KEY], prompt_kind(config))


def check_config(data: bytes, source: str, *, deep: bool = False) -> dict[str, Any]:
    """Validate ``adapter_config.json`` bytes as PEFT would load them; return the parsed object. A deep prompt
    (PREFIX_TUNING) is refused unless ``deep``."""
    try:
        config = strict_json.loads_object(data)
    except strict_json.ByteOrderMarkError:
        raise InvalidAdapterConfigError(
            f"{source} starts with a UTF-8 byte-order mark, which PEFT cannot read; save it without one "
            "(save_pretrained does, as does open(path, 'w', encoding='utf-8'))."
        ) from None
    except strict_json.StrictJSONError as exc:
        raise InvalidAdapterConfigError(f"{source} is not a valid JSON object ({exc}); re-save the adapter.") from None
    peft_type = config.get("peft_type")
    is_deep = prompt_kind(config) is PromptKind.DEEP
    if not deep and is_deep:
        raise DeepPromptNotSupportedError(
            f"{source} is a deep prompt ({peft_type}: keys/values in every layer), and this takes prompts that enter "
            "as input embeddings only. Serve it with MultiPromptModel.add or peft-ext serve, share it with hub."
        )
    allowed = INPUT_PROMPT_TYPE_NAMES + (DEEP_PROMPT_TYPE_NAMES if deep else ())
    if peft_type not in allowed:
        raise UnsupportedPeftTypeError(
            f"{source} has peft_type {_short(peft_type)}; soft prompts are {', '.join(allowed)} adapters."
        )
    from peft import PeftConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    hints = _type_hints(config_cls)
    for name in _REQUIRED:
        if name not in config:
            raise InvalidAdapterConfigError(f"{source} has no {name!r}; re-save the adapter with save_pretrained.")
    for name, value in config.items():
        hint = hints.get(name)
        if name in _POSITIVE_INTS and value is not None and (type(value) is not int or value < 1):
            raise InvalidAdapterConfigError(f"{source}: {name!r} is {_short(value)}; it must be a positive integer.")
        if hint is not None and not _conforms(value, hint):
            raise InvalidAdapterConfigError(
                f"{source}: {name!r} is {_short(value)}, which is not a valid {_hint_name(hint)} for "
                f"{config_cls.__name__}; fix the value and re-save."
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = PeftConfig.from_peft_type(**config)
    except Exception as exc:  # PEFT raises ValueError/TypeError/KeyError... from its __post_init__ checks
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InvalidAdapterConfigError(f"{source} is refused by PEFT's {config_cls.__name__}: {reason}") from None
    if not getattr(built, "is_prompt_learning", False):
        raise UnsupportedPeftTypeError(f"{source}: {peft_type} is not a prompt-learning method.")
    if is_deep:
        _check_deep_config(config, source)
    return config


def _check_deep_config(config: dict[str, Any], source: str) -> None:
    for name in _REQUIRED + _REQUIRED_DEEP[config["peft_type"]]:  # filled in when the model is built; saved, set
        if config.get(name) is None:
            raise InvalidAdapterConfigError(
                f"{source} has no {name!r}, which a deep prompt's values are split by; re-save the adapter with "
                "save_pretrained."
            )
    if (config.get("num_transformer_submodules") or 1) != 1:
        raise InvalidAdapterConfigError(
            f"{source}: num_transformer_submodules is {config['num_transformer_submodules']}, a prefix for an "
            "encoder-decoder model; deep prompts are served on decoder-only models (num_transformer_submodules 1)."
        )
    if config["peft_type"] in DEEP_PROMPT_TYPE_NAMES and config["token_dim"] % config["num_attention_heads"]:
        raise InvalidAdapterConfigError(
            f"{source}: token_dim {config['token_dim']} is not a multiple of num_attention_heads "
            f"{config['num_attention_heads']}; a deep prompt's token_dim is heads x head size. Re-save the adapter."
        )


def check_weights(data: bytes, config: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """Validate safetensors bytes of a soft prompt against its config; return every tensor."""
    tensors = load_checked(data, source)
    if PROMPT_KEY not in tensors:
        raise TensorShapeError(f"{source} has no {PROMPT_KEY!r} tensor (found: {sorted(tensors)[:10]}).")
    shape = tuple(tensors[PROMPT_KEY].shape)
    if len(shape) != 2 or 0 in shape:
        raise TensorShapeError(f"{PROMPT_KEY!r} in {source} has shape {list(shape)}; expected [num_tokens, hidden].")
    expected_rows = _int(config.get("num_virtual_tokens"))
    expected_dim = _int(config.get("token_dim"))
    if prompt_kind(config) is PromptKind.DEEP:  # checked by _check_deep_config; PEFT saves num_virtual_tokens rows
        layers, heads, head_dim = deep_layout(config)
        expected_dim = layers * 2 * heads * head_dim
        meaning = "num_virtual_tokens x num_layers * 2 * key/value heads * head size"
    else:
        if expected_rows is not None:
            expected_rows *= _int(config.get("num_transformer_submodules")) or 1
        meaning = "num_virtual_tokens x token_dim"
    if (expected_rows is not None and shape[0] != expected_rows) or (
        expected_dim is not None and shape[1] != expected_dim
    ):
        raise TensorShapeError(
            f"{PROMPT_KEY!r} in {source} has shape {list(shape)}, but adapter_config.json says "
            f"[{expected_rows}, {expected_dim}] ({meaning})."
        )
    return tensors


def load_checked(data: bytes, source: str) -> dict[str, torch.Tensor]:
    """All tensors of safetensors ``data``, refused unless valid, floating-point (F16/BF16/F32/F64) and finite."""
    try:
        specs = deserialize(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError, MemoryError) as error:
        raise _corrupt(source, error) from None
    for name, spec in specs:
        if spec.get("dtype") not in FLOAT_DTYPES:
            raise TensorDtypeError(
                f"Tensor {name!r} in {source} has dtype {spec.get('dtype')}; adapters must hold "
                f"{', '.join(FLOAT_DTYPES)}. Convert it (e.g. tensor.float()) and re-save."
            )
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError, KeyError) as error:
        raise _corrupt(source, error) from None
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise NonFiniteTensorError(f"Tensor {name!r} in {source} contains NaN or Inf; fix training and re-save.")
    return tensors


# --- a soft prompt as a tensor: from a folder, a PeftModel or given; and the texts that follow it -----------------


def check_prompt_tensor(prompt: torch.Tensor, hidden_size: int, what: str) -> None:
    """Refuse a prompt that cannot be put before this model's embeddings."""
    if prompt.dim() != 2 or prompt.shape[0] < 1:
        raise TensorShapeError(f"{what} must be a [num_tokens, hidden] tensor, got shape {tuple(prompt.shape)}.")
    if prompt.shape[1] != hidden_size:
        raise HiddenSizeMismatchError(
            f"{what} is {prompt.shape[1]} wide but the base model's hidden size is {hidden_size}: "
            "it was trained for a different model."
        )
    if not prompt.is_floating_point():
        raise TensorDtypeError(f"{what} has dtype {prompt.dtype}; a soft prompt is a floating-point tensor.")
    if not torch.isfinite(prompt).all():
        raise NonFiniteTensorError(f"{what} contains NaN or Inf values.")


def kv_layout(model_layers: Sequence[tuple[int, int]], what: str) -> tuple[int, int, int]:
    """A model's deep-prompt layout (layers, key/value heads, head size) from its layers' ``(key/value heads, head
    size)`` (``model_layers``, one per layer); refused unless every layer has the same shape."""
    shapes = set(model_layers)
    if len(shapes) != 1:
        raise KVShapeMismatchError(
            f"{what} cannot fit this base model: its layers keep keys/values of different shapes ({sorted(shapes)} "
            "as (heads, head size)); deep prompts work on models whose layers all share one shape. Use an "
            "input-level prompt (placement='input') on this model."
        )
    ((heads, head_dim),) = shapes
    return len(model_layers), heads, head_dim


def check_kv_layout(found: tuple[int, int, int], model_layers: Sequence[tuple[int, int]], what: str) -> None:
    """Refuse a deep prompt's (layers, key/value heads, head size) unless it is the model's (:func:`kv_layout`)."""
    expected = kv_layout(model_layers, what)
    if tuple(found) != expected:
        raise KVShapeMismatchError(
            f"{what} has {found[0]} layers of {found[1]} key/value heads x head size {found[2]}, but the base model "
            f"has {expected[0]} layers of {expected[1]} key/value heads x head size {expected[2]}: it was made for "
            "another model. Load the base model it was trained on (its adapter_config.json names it in "
            "base_model_name_or_path)."
        )


def check_deep_prompt(prompt: DeepPrompt, model_layers: Sequence[tuple[int, int]], what: str) -> None:
    """Refuse a deep prompt that does not fit a model whose layers keep ``(key/value heads, head size)`` keys/values
    (``model_layers``, one per layer): its layer count, heads and head size must be the model's."""
    values = prompt.values
    if values.dim() != 2 or values.shape[0] < 1 or prompt.num_layers < 1 or prompt.num_heads < 1:
        raise TensorShapeError(
            f"{what} must be a [num_tokens, num_layers * 2 * token_dim] tensor over at least one layer and head, got "
            f"shape {tuple(values.shape)} for {prompt.num_layers} layers of {prompt.num_heads} heads."
        )
    if values.shape[1] % (2 * prompt.num_layers * prompt.num_heads):
        raise TensorShapeError(
            f"{what} is {values.shape[1]} wide, which does not split into {prompt.num_layers} layers x 2 (keys, "
            f"values) x {prompt.num_heads} heads."
        )
    check_kv_layout((prompt.num_layers, prompt.num_heads, prompt.head_dim), model_layers, what)
    if not values.is_floating_point():
        raise TensorDtypeError(f"{what} has dtype {values.dtype}; a deep prompt is a floating-point tensor.")
    if not torch.isfinite(values).all():
        raise NonFiniteTensorError(f"{what} contains NaN or Inf values.")


def load_prompt(source: Any, adapter_name: str | None = None) -> torch.Tensor | DeepPrompt:
    """What :func:`load_soft_prompt` loads, and deep prompts too: a :class:`DeepPrompt`, a PREFIX_TUNING folder or
    a ``PeftModel``'s PREFIX_TUNING adapter (its ``adapter_name`` adapter, by default the active one)."""
    if isinstance(source, DeepPrompt):
        return source
    if isinstance(source, (str, os.PathLike)):
        return read_adapter_folder(source, deep=True).loaded()
    if hasattr(source, "prompt_encoder"):  # a PeftModel
        name = adapter_name if adapter_name is not None else active_adapter(source)
        if name in source.peft_config and is_deep_prompt(source.peft_config[name]):
            return DeepPrompt(*adapter_deep_values(source, name))
    return load_soft_prompt(source, adapter_name)


def load_soft_prompt(source: Any, adapter_name: str | None = None) -> torch.Tensor:
    """A prompt from a ``[n, hidden]`` tensor, an adapter folder, or a ``PeftModel`` (its ``adapter_name`` adapter,
    by default the active one)."""
    if isinstance(source, torch.Tensor):
        return source
    if isinstance(source, (str, os.PathLike)):
        return read_adapter_folder(source).prompt
    if hasattr(source, "prompt_encoder"):  # a PeftModel
        name = adapter_name if adapter_name is not None else active_adapter(source)
        prompt = adapter_prompt(source, name)
        if prompt is None:
            raise InvalidRequestError(f"Adapter name {name!r} means no soft prompt; name a soft-prompt adapter.")
        return prompt
    raise InvalidSourceError(
        f"Cannot read a soft prompt from {type(source).__name__}; give a [n, hidden] tensor, an adapter folder or a "
        "PeftModel (with adapter_name)."
    )


def pad_token_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its EOS (the usual choice for causal LMs)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise InvalidRequestError("The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token.")
    return int(pad)


def pad_texts(tokenizer: Any, texts: list[str], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``texts``, padded on the left (or right) without changing the tokenizer."""
    rows = [list(ids) for ids in tokenizer(texts)["input_ids"]]
    longest = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), longest), pad_token_id(tokenizer), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(rows):
        span = slice(longest - len(ids), longest) if left else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        mask[row, span] = 1
    return input_ids, mask


def _corrupt(source: str, error: BaseException) -> CorruptAdapterError:
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return CorruptAdapterError(f"{source} is not a valid safetensors file ({reason}); re-save the adapter.")


def _type_hints(config_cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_cls)
    except Exception:  # an unresolvable forward reference: fall back to PEFT's own construction checks
        return {}


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a JSON ``value`` fits the annotation ``hint`` (unknown annotations are accepted)."""
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and (not args or all(_conforms(v, args[1]) for v in value.values()))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return type(value) is int
    if hint is float:
        return type(value) in (int, float)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return any(value == member.value for member in hint)
    if hint in (dict, list):
        return isinstance(value, hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return isinstance(value, dict)
    return True


def _hint_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def _int(value: object) -> int | None:
    return value if type(value) is int else None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidAdapterError(f"{path} could not be read ({exc.strerror or type(exc).__name__}).") from None


def _convert_pickle(path: Path, allow_pickle: bool) -> bytes:
    if not allow_pickle:
        raise PickleRefusedError(
            f"{path} is a pickle file, which can run arbitrary code when loaded. Convert it to safetensors, or pass "
            "allow_pickle=True (CLI: --allow-pickle) if you trust its origin."
        )
    from safetensors.torch import save

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise InvalidAdapterError(f"{path} could not be loaded as a tensor dict: {type(exc).__name__}.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidAdapterError(f"{path} does not hold a dict of tensors.")
    return save({k: v.contiguous() for k, v in state.items()})
