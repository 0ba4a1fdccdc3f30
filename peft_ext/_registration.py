"""Registering SOFT_PROMPT with PEFT as soon as PEFT is imported, so that ``import peft_ext`` itself stays instant.

Importing peft_ext must make SOFT_PROMPT known to PEFT, but PEFT imports torch and transformers (seconds), which
``peft-ext --help`` and ``import hub.versions`` should not pay. So registration happens when ``peft`` is imported,
or at once if it already is: a finder on ``sys.meta_path`` watches the loading of ``peft`` and of peft_ext's own
modules. While one of peft_ext's modules is still executing in this thread (it may be the one importing peft, and
registration needs it whole), registration waits for the outermost one to finish.

The startup hook (``_autoload``) imports this module in every Python process, so it imports nothing Python has not
loaded by then: no ``typing`` or ``__future__`` (annotations are strings), no ``threading`` (the depth is kept per
thread id), no ``importlib.abc`` (``sys.meta_path`` needs only a ``find_spec`` method).
"""

import sys
from _thread import get_ident

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import ModuleType
    from typing import Any

_depths: "dict[int, int]" = {}  # thread id -> how many of peft_ext's modules are executing in that thread
_done = False
_autoloaded = False
_register: "Callable[[], None] | None" = None


def _depth() -> int:
    return _depths.get(get_ident(), 0)


def _set_depth(depth: int) -> None:
    if depth:
        _depths[get_ident()] = depth
    else:
        _depths.pop(get_ident(), None)


def _maybe_register(lenient: bool = False) -> None:
    global _done
    if _done or _depth() or _register is None or "peft" not in sys.modules:
        return
    _set_depth(1)  # registration imports peft_ext modules: they must not start it again
    try:
        _register()
        _done = True
    except Exception as error:
        if not lenient:
            raise
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        print(
            f"peft-ext: SOFT_PROMPT is not registered with PEFT ({reason}); PEFT_EXT_AUTOLOAD=0 skips the attempt",
            file=sys.stderr,
        )
    finally:
        _set_depth(0)


class _Watcher:
    def find_spec(self, fullname: str, path: "Sequence[str] | None", target: "ModuleType | None" = None) -> "Any":
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
        # A program that imports peft but never peft_ext, with peft_ext only autoloaded, must not fail because of it.
        lenient = fullname == "peft"

        def exec_module(module: "ModuleType") -> None:
            _set_depth(_depth() + 1)
            try:
                execute(module)
            finally:
                _set_depth(_depth() - 1)
            _maybe_register(lenient=lenient and _autoloaded)

        loader.exec_module = exec_module
        return spec


def register_when_peft_loads(register: "Callable[[], None]") -> None:
    """Call ``register`` once, as soon as ``peft`` is imported and no peft_ext module is half-executed."""
    global _register
    _register = register
    if not any(isinstance(finder, _Watcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Watcher())
    _maybe_register()


def autoload() -> None:
    """Mark registration as the startup hook's doing (``_autoload``): when importing ``peft`` triggers it, a failure
    is one line on stderr and PEFT loads without SOFT_PROMPT. Importing a peft_ext module still raises it."""
    global _autoloaded
    _autoloaded = True


def registered() -> bool:
    return _done
