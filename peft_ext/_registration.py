"""Registering SOFT_PROMPT with PEFT as soon as PEFT is imported, so that ``import peft_ext`` itself stays instant.

Importing peft_ext must make SOFT_PROMPT known to PEFT, but PEFT imports torch and transformers (seconds), which
``peft-ext --help`` and ``import hub.versions`` should not pay. So registration happens when ``peft`` is imported,
or at once if it already is: a finder on ``sys.meta_path`` watches the loading of ``peft`` and of peft_ext's own
modules. While one of peft_ext's modules is still executing in this thread (it may be the one importing peft, and
registration needs it whole), registration waits for the outermost one to finish.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

_state = threading.local()  # depth: how many of peft_ext's modules are executing in this thread
_done = False
_register: Callable[[], None] | None = None


def _depth() -> int:
    return getattr(_state, "depth", 0)


def _maybe_register() -> None:
    global _done
    if _done or _depth() or _register is None or "peft" not in sys.modules:
        return
    _state.depth = 1  # registration imports peft_ext modules: they must not start it again
    try:
        _register()
        _done = True
    finally:
        _state.depth = 0


class _Watcher(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if fullname != "peft" and not fullname.startswith("peft_ext."):
            return None
        spec = next(
            (
                found
                for finder in sys.meta_path
                if finder is not self
                and hasattr(finder, "find_spec")
                and (found := finder.find_spec(fullname, path, target)) is not None
            ),
            None,
        )
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            _state.depth = _depth() + 1
            try:
                execute(module)
            finally:
                _state.depth = _depth() - 1
            _maybe_register()

        loader.exec_module = exec_module
        return spec


def register_when_peft_loads(register: Callable[[], None]) -> None:
    """Call ``register`` once, as soon as ``peft`` is imported and no peft_ext module is half-executed."""
    global _register
    _register = register
    if not any(isinstance(finder, _Watcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Watcher())
    _maybe_register()


def registered() -> bool:
    return _done
