"""peft-ext: soft prompts as first-class, shareable PEFT adapters.

Importing this package registers the ``SOFT_PROMPT`` method with PEFT, so ``get_peft_model``, ``save_pretrained``,
``PeftModel.from_pretrained``, ``load_adapter`` and ``push_to_hub`` work for it as for PEFT's own methods.
"""

from ._peft_integration import BASE_ADAPTER, adapter_prompt, register, use_exact_generate
from .config import SoftPromptConfig
from .errors import PeftExtError
from .export import export_prompt_tuning
from .kv_cache import KVCacheStats, PromptKVCache
from .multi import MultiPromptModel
from .prompt_module import SoftPromptEncoder
from .prompting import forward_with_prompts, generate_with_prompts

register()

__version__ = "0.1.0.dev0"

__all__ = [
    "BASE_ADAPTER",
    "KVCacheStats",
    "MultiPromptModel",
    "PeftExtError",
    "PromptKVCache",
    "SoftPromptConfig",
    "SoftPromptEncoder",
    "adapter_prompt",
    "export_prompt_tuning",
    "forward_with_prompts",
    "generate_with_prompts",
    "register",
    "use_exact_generate",
]
