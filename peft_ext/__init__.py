"""peft-ext: soft prompts as first-class, shareable PEFT adapters.

Importing this package registers the ``SOFT_PROMPT`` method with PEFT, so ``get_peft_model``, ``save_pretrained``,
``PeftModel.from_pretrained``, ``load_adapter`` and ``push_to_hub`` work for it as for PEFT's own methods. The
import itself is instant: registration happens as soon as ``peft`` is imported (``_registration``), and the names
below load on first use.
"""

# The startup hook (``_autoload``) imports this package in every Python process: no ``from __future__`` or ``typing``
# here (annotations are strings), and ``errors`` is lazy like the rest.
from . import _registration

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .engine import BASE_ADAPTER, KVCacheStats, PromptEngine, PromptKVCache
    from .errors import PeftExtError
    from .export import export_prefix_tuning, export_prompt_tuning
    from .integration import adapter_prompt
    from .multi import MultiPromptModel
    from .soft_prompt import Init, LengthPolicy, Reparameterization, SoftPromptConfig, SoftPromptEncoder

__version__ = "0.1.0.dev0"

_LAZY = {
    "BASE_ADAPTER": "peft_ext.integration",
    "KVCacheStats": "peft_ext.engine",
    "PromptEngine": "peft_ext.engine",
    "PromptKVCache": "peft_ext.engine",
    "export_prefix_tuning": "peft_ext.export",
    "export_prompt_tuning": "peft_ext.export",
    "adapter_prompt": "peft_ext.integration",
    "MultiPromptModel": "peft_ext.multi",
    "PeftExtError": "peft_ext.errors",
    "Init": "peft_ext.soft_prompt",
    "LengthPolicy": "peft_ext.soft_prompt",
    "Reparameterization": "peft_ext.soft_prompt",
    "SoftPromptConfig": "peft_ext.soft_prompt",
    "SoftPromptEncoder": "peft_ext.soft_prompt",
}


def __getattr__(name: str) -> "Any":
    if name not in _LAZY:
        raise AttributeError(f"module 'peft_ext' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


def register() -> None:
    """Register ``SOFT_PROMPT`` with PEFT now. Safe to call any number of times; importing peft_ext arranges it."""
    from . import integration
    from .engine import peft_model
    from .soft_prompt import SoftPromptConfig, SoftPromptEncoder
    from .soft_prompt.config import SOFT_PROMPT

    integration.install(
        integration.PromptMethod(
            name=SOFT_PROMPT,
            config_class=SoftPromptConfig,
            encoder_class=SoftPromptEncoder,
            forward=peft_model.forward,
            generate=peft_model.generate,
        )
    )


def use_exact_generate(model: "Any", enabled: bool = True) -> "Any":
    """Route ``generate`` of this model's stock ``PROMPT_TUNING``/``P_TUNING``/``PREFIX_TUNING`` adapters through
    peft_ext's path.

    Stock PEFT 0.21 prompt-tuning ``generate`` is wrong with transformers >= 5.24 (it feeds the virtual tokens again
    at every decoding step: wrong tokens on RoPE models, index errors on GPT-2/OPT), and prefix-tuning ``generate``
    ignores the prefix (the base model's tokens); their ``forward`` is right. With this opt-in, ``generate`` puts the
    active adapter's prompt (input embeddings or per-layer keys/values) before the text once, as SOFT_PROMPT adapters
    always do, and gives the tokens that greedy decoding with PEFT's own ``forward`` gives. ``forward`` is left to
    PEFT. Returns ``model``.
    """
    from .integration import route_stock_generate

    route_stock_generate(model, enabled)
    return model


_registration.register_when_peft_loads(register)

__all__ = [
    "BASE_ADAPTER",
    "Init",
    "KVCacheStats",
    "LengthPolicy",
    "MultiPromptModel",
    "PeftExtError",
    "PromptEngine",
    "PromptKVCache",
    "Reparameterization",
    "SoftPromptConfig",
    "SoftPromptEncoder",
    "adapter_prompt",
    "export_prefix_tuning",
    "export_prompt_tuning",
    "register",
    "use_exact_generate",
]
