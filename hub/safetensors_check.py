"""Reading adapter weights from bytes with safetensors itself, which validates the layout (header, offsets,
truncation), then the checks an adapter needs on top: floating-point dtypes and finite values."""

from __future__ import annotations

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load

from .errors import CorruptAdapterError, NonFiniteTensorError, TensorDtypeError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def load_checked(data: bytes, source: str) -> dict[str, torch.Tensor]:
    """All tensors of safetensors ``data``, refused unless valid, floating-point (F16/BF16/F32/F64) and finite."""
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CorruptAdapterError(
            f"{source} is not a valid safetensors file ({reason}); re-save the adapter."
        ) from None
    for name, tensor in tensors.items():
        if tensor.dtype not in FLOAT_DTYPES:
            raise TensorDtypeError(
                f"Tensor {name!r} in {source} has dtype {tensor.dtype}; adapters must hold F16, BF16, F32 or F64."
            )
        if not bool(torch.isfinite(tensor).all()):
            raise NonFiniteTensorError(f"Tensor {name!r} in {source} contains NaN or Inf; fix training and re-save.")
    return tensors


def load_float32(data: bytes, source: str) -> dict[str, np.ndarray]:
    """All tensors of a validated safetensors file as float32 numpy arrays."""
    return {name: tensor.float().numpy() for name, tensor in load_checked(data, source).items()}
