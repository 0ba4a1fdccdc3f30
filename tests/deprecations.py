"""Turn a deprecation warning caused by ``peft_ext`` or ``hub`` code into a test failure.

transformers warns through wrappers (``deprecate_kwarg``, ``nn.Module.__call__``), so the frame Python blames for a
warning is a library frame, not the caller: a ``filterwarnings`` rule on our module names would miss it. Here the
stack is walked past those wrapper frames to the code that made the call; if that is ours, the warning is an error.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OURS = tuple(str(ROOT / package) + "/" for package in ("peft_ext", "hub"))
# Frames that only pass a call through: the deprecation decorator, module dispatch, no_grad/decorator plumbing.
PLUMBING = (
    "/transformers/utils/deprecation.py",
    "/transformers/utils/generic.py",
    "/transformers/utils/output_capturing.py",
    "/torch/nn/modules/module.py",
    "/torch/utils/_contextlib.py",
    "/tests/deprecations.py",
    "/warnings.py",
    "/functools.py",
    "/contextlib.py",
)
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def caller_of_warning(frame: FrameType | None) -> str | None:
    """The file of the first frame above ``frame`` that is not plumbing: the code that made the deprecated call."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.endswith(PLUMBING) and "<" not in filename:
            return filename
        frame = frame.f_back
    return None


@contextlib.contextmanager
def fail_on_our_deprecations() -> Iterator[None]:
    original = warnings.warn

    def warn(message: Any, category: Any = None, stacklevel: int = 1, *args: Any, **kwargs: Any) -> None:
        kind = category if category is not None else (type(message) if isinstance(message, Warning) else UserWarning)
        if isinstance(kind, type) and issubclass(kind, DEPRECATIONS):
            caller = caller_of_warning(sys._getframe(1))
            if caller is not None and caller.startswith(OURS):
                raise AssertionError(f"Deprecated call from our code ({caller}): {kind.__name__}: {message}")
        original(message, category, stacklevel + 1, *args, **kwargs)

    warnings.warn = warn  # type: ignore[assignment]
    try:
        yield
    finally:
        warnings.warn = original
