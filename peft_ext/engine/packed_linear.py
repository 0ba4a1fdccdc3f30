"""Linear layers with their weights laid out once for the CPU's matrix kernels (oneDNN), for inference.

``F.linear`` on the CPU reads each weight in its stored layout at every call; oneDNN can reorder a weight once into
the blocked layout its kernels read fastest, which is what ``torch.compile`` with freezing does on the CPU. Measured
on the embedded model (1 thread, AVX-512 BF16 CPU): bfloat16 linears take half the time, with results bit-identical to
``F.linear``; float32 linears are faster from a few rows on and differ from ``F.linear`` by about 1e-6 (another
summation order), so float32 uses the reordered weights only for calls of at least :data:`MIN_FLOAT32_ROWS` rows.
Every row's result is the same whatever the other rows (the property the serving exactness contract rests on).

:func:`pack_linears` swaps a model's ``nn.Linear`` layers for :class:`PackedLinear` in place (the weights stay the
same parameters, tied ones included) and :func:`unpack_linears` swaps them back. A packed layer computes with plain
``F.linear`` whenever gradients are needed, and reorders again after its weight changed in place.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

MIN_FLOAT32_ROWS = 4  # below this, float32's plain kernel (a matrix-vector product) is the faster one
_REORDER_ROWS = 16  # the row count oneDNN lays the weights out for (any count runs)


class PackedLinear(nn.Module):
    """An ``nn.Linear`` whose weight is also held reordered for oneDNN; same parameters, same state dict."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self._min_rows = MIN_FLOAT32_ROWS if linear.weight.dtype == torch.float32 else 1
        self._packed, self._packed_version = self._pack(), self.weight._version

    def _pack(self) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), _REORDER_ROWS)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        rows = inputs.numel() // self.in_features
        if rows < self._min_rows or (torch.is_grad_enabled() and (inputs.requires_grad or self.weight.requires_grad)):
            return functional.linear(inputs, self.weight, self.bias)
        if self.weight._version != self._packed_version:  # the weight changed in place since it was reordered
            self._packed, self._packed_version = self._pack(), self.weight._version
        flat = inputs.reshape(rows, self.in_features)
        output = torch.ops.mkldnn._linear_pointwise(flat, self._packed, self.bias, "none", [], "")
        return output.reshape(*inputs.shape[:-1], self.out_features)

    def unpacked(self) -> nn.Linear:
        """A plain ``nn.Linear`` over the same parameters."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def can_pack(dtype: torch.dtype) -> bool:
    """Whether linears of ``dtype`` on the CPU run faster reordered here: float32 wherever oneDNN is built in,
    bfloat16 where the CPU computes in it natively (AVX-512 BF16 or AMX; elsewhere oneDNN emulates it, slowly)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and cpu_has_bf16())


def pack_linears(model: nn.Module) -> int:
    """Swap every ``nn.Linear`` of ``model`` on the CPU whose dtype :func:`can_pack` for a :class:`PackedLinear`, in
    place; return how many were swapped (0 on a GPU, or where oneDNN would not be faster). For inference: training
    through a packed layer computes as ``nn.Linear`` does, without the speed."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.device.type == "cpu" and can_pack(child.weight.dtype):
                setattr(parent, name, PackedLinear(child))
                swapped += 1
    return swapped


def unpack_linears(model: nn.Module) -> int:
    """Undo :func:`pack_linears`: every :class:`PackedLinear` becomes an ``nn.Linear`` again; return how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PackedLinear):
                setattr(parent, name, child.unpacked())
                swapped += 1
    return swapped


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX), as Linux reports it."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:  # not Linux
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))
