"""The one engine that runs a frozen model with a (possibly different) soft prompt per row.

``PeftModel(..., adapter_names=...)``, ``MultiPromptModel`` and anything serving requests go through
:class:`PromptEngine`: rows are resolved to distinct prompts (each computed once per call, and not at all when its
keys/values are cached), laid out with positions that make every row independent of its padding and of the other
rows (``layout``), and run with each prompt's cached keys/values (``kv_cache``).
"""

from ..integration import BASE_ADAPTER
from .engine import Prompt, PromptEngine
from .kv_cache import DEFAULT_MAX_BYTES, KVCacheStats, PromptKVCache

__all__ = ["BASE_ADAPTER", "DEFAULT_MAX_BYTES", "KVCacheStats", "Prompt", "PromptEngine", "PromptKVCache"]
