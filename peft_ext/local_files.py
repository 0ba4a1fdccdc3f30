"""Where peft_ext keeps files on this machine, and how it writes them so that no reader ever sees half a file.

Light on purpose (no torch): the stores and the command line use it before anything heavy is loaded.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def cache_root() -> Path:
    """``$PEFT_EXT_CACHE``, else ``$XDG_CACHE_HOME/peft_ext``, else ``~/.cache/peft_ext``."""
    if os.environ.get("PEFT_EXT_CACHE"):
        return Path(os.environ["PEFT_EXT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "peft_ext"


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` and flush it to disk before returning."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    write_synced(temp, data)
    os.replace(temp, path)
