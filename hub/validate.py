"""Reading and validating an adapter folder before anything is written to a store.

Everything is read into memory once: the bytes that are validated are the bytes that get hashed and stored, so a
file changing under us cannot slip through. Only the PEFT files are pushed: ``adapter_config.json`` and
``adapter_model.safetensors`` (a pickle ``adapter_model.bin`` is converted to safetensors when explicitly allowed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidAdapterError, PickleRefusedError, TensorShapeError
from .safetensors_check import load_checked

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
PROMPT_KEY = "prompt_embeddings"


@dataclass(frozen=True)
class AdapterPayload:
    """The validated files of one adapter version (name -> bytes) and what they hold."""

    files: dict[str, bytes]
    config: dict[str, Any]
    num_virtual_tokens: int
    token_dim: int


def load_adapter_folder(folder: str | Path, *, allow_pickle: bool = False) -> AdapterPayload:
    """Read and validate a PEFT soft-prompt adapter folder; raise a named :class:`InvalidAdapterError` if unusable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidAdapterError(f"Adapter folder {str(folder)!r} does not exist or is not a directory.")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise InvalidAdapterError(f"{str(folder)!r} has no {CONFIG_FILE}; save the adapter with save_pretrained.")
    config_bytes = config_path.read_bytes()
    try:
        config = json.loads(config_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidAdapterError(f"{config_path} is not valid JSON.") from None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise InvalidAdapterError(f"{config_path} must be a JSON object with a string 'peft_type'.")
    weights_path = folder / WEIGHTS_FILE
    if weights_path.is_file():
        weights = weights_path.read_bytes()
    elif (folder / PICKLE_FILE).is_file():
        weights = _convert_pickle(folder / PICKLE_FILE, allow_pickle)
    else:
        raise InvalidAdapterError(f"{str(folder)!r} has no {WEIGHTS_FILE}.")
    n, dim = check_weights(weights, config, str(weights_path))
    return AdapterPayload({CONFIG_FILE: config_bytes, WEIGHTS_FILE: weights}, config, n, dim)


def check_weights(data: bytes, config: dict[str, Any], source: str) -> tuple[int, int]:
    """Validate safetensors bytes of a soft prompt; return ``prompt_embeddings``' shape."""
    tensors = load_checked(data, source)
    if PROMPT_KEY not in tensors:
        raise TensorShapeError(f"{source} has no {PROMPT_KEY!r} tensor (found: {sorted(tensors)}).")
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


def _int(value: object) -> int | None:
    return value if type(value) is int else None


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
