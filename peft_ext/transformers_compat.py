"""The one place that knows how the transformers versions peft_ext supports differ (see ``pyproject.toml``).

transformers 5.24 renamed the key/value cache argument and output field from ``past_key_values`` to ``cache``
(the old name is removed from model ``forward`` in 5.40 and from ``generate`` in 6.0). Each call site asks here
which name the installed version takes, decided from the callee's own signature, so no version number is guessed.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.cache
def _cache_argument(function: Any) -> str:
    parameters = inspect.signature(function).parameters  # follows the deprecation wrapper's __wrapped__
    return "cache" if "cache" in parameters else "past_key_values"


def cache_argument(model: Any) -> str:
    """The keyword for a key/value cache in ``model(...)`` and ``model.generate(...)``: ``cache`` or
    ``past_key_values``. Read from the model's ``forward`` (``generate`` takes it through ``**kwargs``)."""
    return _cache_argument(type(model).forward)


def output_cache(output: Any) -> Any:
    """The key/value cache a model output returned, under whichever name the installed transformers uses."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


# Stock PEFT 0.21 prompt-tuning ``generate`` feeds the virtual tokens again at every decoding step from this
# transformers release on (checked: 5.0.0, 5.12.1, 5.18.0, 5.21.1 and 5.23.0 are right, 5.24.0 is wrong).
STOCK_PROMPT_GENERATE_BROKEN_SINCE = "5.24.0"


def stock_prompt_generate_is_broken() -> bool:
    """Whether the installed transformers breaks stock PEFT prompt-tuning/p-tuning ``generate``."""
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__) >= Version(STOCK_PROMPT_GENERATE_BROKEN_SINCE)
