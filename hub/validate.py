"""Reading and validating an adapter folder before anything is written to a store.

Everything is read into memory once: the bytes that are validated are the bytes that get hashed and stored, so a
file changing under us cannot slip through. Only the PEFT files are pushed: ``adapter_config.json`` and
``adapter_model.safetensors`` (a pickle ``adapter_model.bin`` is converted to safetensors when explicitly allowed).

The config is checked the way PEFT will load it: strict JSON, a ``peft_type`` that is a soft-prompt method, PEFT's
own config class built from it (``PeftConfig.from_peft_type``, as ``PeftModel.from_pretrained`` does), and every
field present checked against that class's type annotations (PEFT itself does not check them, so ``"4"`` or ``4.0``
for ``num_virtual_tokens`` would load and fail later).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import strict_json
from .errors import (
    InvalidAdapterConfigError,
    InvalidAdapterError,
    InvalidSourceError,
    PickleRefusedError,
    TensorShapeError,
    UnsupportedPeftTypeError,
)
from .names import CONFIG_FILE, PICKLE_FILE, WEIGHTS_FILE
from .safetensors_check import load_checked

PROMPT_KEY = "prompt_embeddings"
__all__ = ["CONFIG_FILE", "PICKLE_FILE", "PROMPT_KEY", "WEIGHTS_FILE", "AdapterPayload", "load_adapter_folder"]

# Fields whose value the weights' shape depends on: positive integers (PEFT's annotations say ``int``; bool is out).
_POSITIVE_INTS = ("num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_layers", "num_attention_heads")
_REQUIRED = ("num_virtual_tokens", "token_dim")


@dataclass(frozen=True)
class AdapterPayload:
    """The validated files of one adapter version (name -> bytes) and what they hold."""

    files: dict[str, bytes]
    config: dict[str, Any]
    num_virtual_tokens: int
    token_dim: int


def source_folder(source: object) -> Path:
    """``source`` as a folder path, or :class:`InvalidSourceError` if it is not a path at all."""
    if isinstance(source, (str, os.PathLike)) and not isinstance(source, bytes):
        path = os.fspath(source)
        if isinstance(path, str):
            return Path(path)
    raise InvalidSourceError(
        f"push source must be an adapter folder (a str or Path) or a PeftModel, got {type(source).__name__} "
        f"{_short(source)}."
    )


def load_adapter_folder(folder: str | os.PathLike[str], *, allow_pickle: bool = False) -> AdapterPayload:
    """Read and validate a PEFT soft-prompt adapter folder; raise a named :class:`InvalidAdapterError` if unusable."""
    folder = source_folder(folder)
    if not folder.is_dir():
        raise InvalidAdapterError(f"Adapter folder {str(folder)!r} does not exist or is not a directory.")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise InvalidAdapterError(f"{str(folder)!r} has no {CONFIG_FILE} file; save the adapter with save_pretrained.")
    config_bytes = _read(config_path)
    config = check_config(config_bytes, str(config_path))
    weights_path = folder / WEIGHTS_FILE
    if weights_path.is_file():
        weights = _read(weights_path)
    elif (folder / PICKLE_FILE).is_file():
        weights = _convert_pickle(folder / PICKLE_FILE, allow_pickle)
    else:
        raise InvalidAdapterError(f"{str(folder)!r} has no {WEIGHTS_FILE} file; save the adapter with save_pretrained.")
    n, dim = check_weights(weights, config, str(weights_path))
    return AdapterPayload({CONFIG_FILE: config_bytes, WEIGHTS_FILE: weights}, config, n, dim)


def check_config(data: bytes, source: str) -> dict[str, Any]:
    """Validate ``adapter_config.json`` bytes as PEFT would load them; return the parsed object."""
    try:
        config = strict_json.loads(data)
    except strict_json.StrictJSONError as exc:
        raise InvalidAdapterConfigError(f"{source} is not valid JSON ({exc}); re-save the adapter.") from None
    if not isinstance(config, dict):
        raise InvalidAdapterConfigError(f"{source} must hold a JSON object, not a {type(config).__name__}.")
    peft_type = config.get("peft_type")
    allowed = _soft_prompt_types()
    if peft_type not in allowed:
        raise UnsupportedPeftTypeError(
            f"{source} has peft_type {_short(peft_type)}; hub stores soft prompts only: {', '.join(allowed)}."
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
    return config


def check_weights(data: bytes, config: dict[str, Any], source: str) -> tuple[int, int]:
    """Validate safetensors bytes of a soft prompt; return ``prompt_embeddings``' shape."""
    tensors = load_checked(data, source)
    if PROMPT_KEY not in tensors:
        raise TensorShapeError(f"{source} has no {PROMPT_KEY!r} tensor (found: {sorted(tensors)[:10]}).")
    shape = tuple(tensors[PROMPT_KEY].shape)
    if len(shape) != 2 or 0 in shape:
        raise TensorShapeError(f"{PROMPT_KEY!r} in {source} has shape {list(shape)}; expected [num_tokens, hidden].")
    expected_rows = _int(config.get("num_virtual_tokens"))
    if expected_rows is not None:
        expected_rows *= _int(config.get("num_transformer_submodules")) or 1
    expected_dim = _int(config.get("token_dim"))
    if (expected_rows is not None and shape[0] != expected_rows) or (
        expected_dim is not None and shape[1] != expected_dim
    ):
        raise TensorShapeError(
            f"{PROMPT_KEY!r} in {source} has shape {list(shape)}, but adapter_config.json says "
            f"[{expected_rows}, {expected_dim}] (num_virtual_tokens x token_dim)."
        )
    return shape[0], shape[1]


def _soft_prompt_types() -> tuple[str, ...]:
    import peft_ext  # noqa: F401  (registers SOFT_PROMPT with PEFT)
    from peft_ext.integration import INPUT_PROMPT_TYPE_NAMES

    return tuple(INPUT_PROMPT_TYPE_NAMES)


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
    import torch
    from safetensors.torch import save

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad pickle
        raise InvalidAdapterError(f"{path} could not be loaded as a tensor dict: {type(exc).__name__}.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidAdapterError(f"{path} does not hold a dict of tensors.")
    return save({k: v.contiguous() for k, v in state.items()})
