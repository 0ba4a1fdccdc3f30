"""peft-ext: soft prompts as first-class, shareable PEFT adapters.

Importing this package registers the ``SOFT_PROMPT`` method with PEFT, so ``get_peft_model``, ``save_pretrained``,
``PeftModel.from_pretrained``, ``load_adapter`` and ``push_to_hub`` work for it as for PEFT's own methods.
"""

from . import integration
from .engine import BASE_ADAPTER, KVCacheStats, PromptEngine, PromptKVCache
from .engine import peft_model as _peft_model_rows
from .errors import PeftExtError
from .export import export_prompt_tuning
from .multi import MultiPromptModel
from .soft_prompt import Init, LengthPolicy, Reparameterization, SoftPromptConfig, SoftPromptEncoder
from .soft_prompt.config import SOFT_PROMPT

__version__ = "0.1.0.dev0"


def register() -> None:
    """Register ``SOFT_PROMPT`` with PEFT. Safe to call any number of times; importing peft_ext calls it."""
    integration.install(
        integration.PromptMethod(
            name=SOFT_PROMPT,
            config_class=SoftPromptConfig,
            encoder_class=SoftPromptEncoder,
            forward=_peft_model_rows.forward,
            generate=_peft_model_rows.generate,
        )
    )


def use_exact_generate(model: object, enabled: bool = True) -> object:
    """Route ``generate`` of this model's stock ``PROMPT_TUNING``/``P_TUNING`` adapters through peft_ext's path.

    Stock PEFT 0.21 prompt-tuning ``generate`` is wrong with transformers >= 5.24 (it feeds the virtual tokens again
    at every decoding step: wrong tokens on RoPE models, index errors on GPT-2/OPT); its ``forward`` is right. With
    this opt-in, ``generate`` prepends the active adapter's prompt once, as SOFT_PROMPT adapters always do, and gives
    the tokens that greedy decoding with PEFT's own ``forward`` gives. ``forward`` is left to PEFT. Returns ``model``.
    """
    integration.route_stock_generate(model, enabled)
    return model


adapter_prompt = integration.adapter_prompt

register()

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
    "export_prompt_tuning",
    "register",
    "use_exact_generate",
]
