"""The SOFT_PROMPT method, shaped like PEFT's ``tuners/<method>/``: its config, init strategies, reparameterization
encoders and the prompt module PEFT builds."""

from .config import SoftPromptConfig
from .encoders import Reparameterization
from .model import SoftPromptEncoder
from .strategies import Init, LengthPolicy

__all__ = ["Init", "LengthPolicy", "Reparameterization", "SoftPromptConfig", "SoftPromptEncoder"]
