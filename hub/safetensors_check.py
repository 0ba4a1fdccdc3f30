"""Reading adapter weights from bytes with safetensors itself, which validates the layout (header, offsets,
truncation), then the checks an adapter needs on top: floating-point dtypes and finite values.

The dtypes are read from safetensors' own parse of the header (``safetensors.deserialize``) before any tensor is
built, so a dtype torch cannot represent (F4, F6_*, F8_E8M0, ...) is refused by name instead of failing inside the
torch conversion.
"""

from __future__ import annotations

import numpy as np
import torch
from safetensors import SafetensorError, deserialize
from safetensors.torch import load

from .errors import CorruptAdapterError, NonFiniteTensorError, TensorDtypeError

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


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


def load_float32(data: bytes, source: str) -> dict[str, np.ndarray]:
    """All tensors of a validated safetensors file as float32 numpy arrays."""
    return {name: tensor.float().numpy() for name, tensor in load_checked(data, source).items()}


def _corrupt(source: str, error: BaseException) -> CorruptAdapterError:
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return CorruptAdapterError(f"{source} is not a valid safetensors file ({reason}); re-save the adapter.")
