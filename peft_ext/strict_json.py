"""Strict JSON for everything hub writes or reads: UTF-8 text, finite numbers only, bounded depth, string keys.

Python's ``json`` accepts ``NaN``/``Infinity`` and turns ``1e999`` into ``inf``, none of which it can write back with
``allow_nan=False``, and recurses without bound on nested input. Given bytes, it also guesses the encoding and drops a
leading UTF-8 byte-order mark, which PEFT (``json.load`` of a text file) refuses: a document is read as UTF-8 without
one. Everything that reads or validates JSON in hub and the adapter reader goes through :func:`loads` and
:func:`problem`, so what is accepted is exactly what can be written again, and read by PEFT.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64


class StrictJSONError(ValueError):
    """Internal: the reason a document was refused (callers re-raise their own named error)."""


class ByteOrderMarkError(StrictJSONError):
    """Internal: the document starts with a UTF-8 byte-order mark."""


def loads(data: bytes | str) -> Any:
    """Parse JSON; raise :class:`StrictJSONError` for text that is not UTF-8 (or starts with a byte-order mark),
    invalid JSON, non-finite numbers or nesting deeper than 64."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise StrictJSONError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if text.startswith("\ufeff"):
        raise ByteOrderMarkError("starts with a UTF-8 byte-order mark")
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float)
    except RecursionError:
        raise StrictJSONError(f"nested deeper than {MAX_DEPTH} levels") from None
    except StrictJSONError:
        raise
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise StrictJSONError(str(exc).splitlines()[0] if str(exc) else "not valid JSON") from None
    found = problem(value)
    if found:
        raise StrictJSONError(found)
    return value


def loads_object(data: bytes | str) -> dict[str, Any]:
    """:func:`loads` for documents that must be one JSON object (configs, manifests)."""
    value = loads(data)
    if not isinstance(value, dict):
        raise StrictJSONError(f"a {type(value).__name__}, not a JSON object")
    return value


def problem(value: Any, where: str = "value", depth: int = 0) -> str | None:
    """Why ``value`` cannot be written as strict JSON and read back equal (``None`` if it can)."""
    if depth > MAX_DEPTH:
        return f"{where} is nested deeper than {MAX_DEPTH} levels"
    if value is None or isinstance(value, (bool, str)):
        return None
    if isinstance(value, int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value!r}; only finite numbers can be stored"
    if isinstance(value, list):
        for i, item in enumerate(value):
            if found := problem(item, f"{where}[{i}]", depth + 1):
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the key {key!r}; JSON object keys must be strings"
            if found := problem(item, f"{where}[{key!r}]", depth + 1):
                return found
        return None
    return f"{where} is a {type(value).__name__}; only JSON values (dict, list, str, int, float, bool, None) are stored"


def _constant(name: str) -> Any:
    raise StrictJSONError(f"non-standard JSON constant {name}")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError(f"number {text[:20]} is out of range")
    return value
