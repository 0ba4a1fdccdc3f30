"""Strict, torch-free reading of safetensors bytes: header validation and NaN/Inf checks with numpy.

The format is its own documentation: 8-byte little-endian header length, a JSON header mapping tensor names to
``{"dtype", "shape", "data_offsets"}`` (plus optional ``__metadata__``), then the tensor bytes, contiguous and in
offset order. Anything else (truncation, overlap, trailing bytes, unknown dtypes) is reported as corrupt.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

from .errors import CorruptAdapterError, NonFiniteTensorError, TensorDtypeError

FLOAT_DTYPES: dict[str, np.dtype] = {
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
}
_ITEM_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2}
_ITEM_SIZES |= {"I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def read_header(data: bytes, source: str) -> tuple[dict[str, TensorInfo], int]:
    """Validate the layout of safetensors ``data``; return its tensors and where their bytes start."""

    def corrupt(why: str) -> CorruptAdapterError:
        return CorruptAdapterError(f"{source} is not a valid safetensors file ({why}); re-save the adapter.")

    if len(data) < 8:
        raise corrupt("file shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise corrupt(f"header length {n} exceeds the file size {len(data)}: truncated?")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise corrupt("header is not JSON") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = dtype in _ITEM_SIZES and all(type(d) is int and d >= 0 for d in (*shape, begin, end))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise corrupt(f"bad header entry for tensor {name!r}")
        if end - begin != math.prod(shape) * _ITEM_SIZES[dtype]:
            raise corrupt(f"tensor {name!r} byte range does not match its shape and dtype")
        tensors[name] = TensorInfo(name, dtype, shape, begin, end)
    position = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin != position:
            raise corrupt(f"tensor {info.name!r} data is not contiguous")
        position = info.end
    if 8 + n + position != len(data):
        raise corrupt(f"data section is {len(data) - 8 - n} bytes, header describes {position}: truncated?")
    return tensors, 8 + n


def as_float32(data: bytes, start: int, info: TensorInfo, source: str) -> np.ndarray:
    """The tensor as a float32 numpy array; refuse non-float dtypes."""
    if info.dtype not in FLOAT_DTYPES:
        raise TensorDtypeError(
            f"Tensor {info.name!r} in {source} has dtype {info.dtype}; adapters must hold F16, BF16, F32 or F64."
        )
    raw = np.frombuffer(data, dtype=FLOAT_DTYPES[info.dtype], count=math.prod(info.shape), offset=start + info.begin)
    if info.dtype == "BF16":
        raw = (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False).reshape(info.shape)


def check_finite(data: bytes, start: int, info: TensorInfo, source: str) -> None:
    values = as_float32(data, start, info, source)
    if info.dtype == "F64":  # F64 -> F32 can overflow to Inf; check in the stored precision
        raw = np.frombuffer(data, dtype="<f8", count=values.size, offset=start + info.begin)
        finite = bool(np.isfinite(raw).all())
    else:
        finite = bool(np.isfinite(values).all())
    if not finite:
        raise NonFiniteTensorError(f"Tensor {info.name!r} in {source} contains NaN or Inf; fix training and re-save.")


def load_float32(data: bytes, source: str) -> dict[str, np.ndarray]:
    """All tensors of a validated safetensors file as float32 arrays."""
    tensors, start = read_header(data, source)
    return {name: as_float32(data, start, info, source) for name, info in tensors.items()}
