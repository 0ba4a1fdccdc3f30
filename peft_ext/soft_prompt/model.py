"""``SoftPromptEncoder``: the prompt module PEFT builds for a ``SoftPromptConfig`` adapter.

The module holds the same tensors whether it was built to train or loaded for inference, so a reloaded adapter's
``state_dict()`` equals the saved one: ``embedding`` (the trained vectors), the reparameterization ``encoder`` (no
parameters for 'direct') and, with anchors, the frozen ``anchor_values``. ``prompt()`` is always
``anchors + encoder(vectors)[k:]``. Saving writes that final prompt as ``prompt_embeddings`` (what stock PEFT and every
reader of a folder use) plus, for reparameterized prompts, the vectors and encoder under ``TRAINING_STATE_PREFIX``,
so training resumes and a re-saved inference load keeps them. A reparameterized adapter saved without them (by an
older release, or exported) loads for inference as its final prompt, with the encoder dropped.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BasePromptEncoder
from torch import nn

from ..adapter_files import PROMPT_KEY, check_prompt_tensor
from ..errors import HiddenSizeMismatchError, InvalidAdapterError, InvalidConfigError
from .config import SoftPromptConfig
from .encoders import ENCODERS, Reparameterization
from .strategies import INIT_STRATEGIES, Init

TRAINING_STATE_PREFIX = "soft_prompt_training."


class SoftPromptEncoder(BasePromptEncoder):
    """Holds one soft prompt; ``prompt()`` returns it as ``[num_virtual_tokens, config.prompt_width]``: input
    embeddings, or (deep) every layer's keys/values in PEFT's PREFIX_TUNING layout. ``model``, the frozen base,
    is needed only to initialize a deep prompt."""

    def __init__(
        self, config: SoftPromptConfig, word_embeddings: nn.Embedding, initialize: bool = True, model: Any = None
    ) -> None:
        super().__init__()
        num_tokens, hidden = config.num_virtual_tokens, config.prompt_width
        self.reparameterization = config.reparameterization
        self.num_anchor_tokens = config.num_anchor_tokens
        self.inference_mode = bool(config.inference_mode)
        self.embedding = nn.Embedding(num_tokens, hidden)
        self.encoder: nn.Module | None = ENCODERS[Reparameterization(config.reparameterization)](hidden, config)
        if self.num_anchor_tokens:
            self.register_buffer("anchor_values", torch.zeros(self.num_anchor_tokens, hidden))
        # The direct prompt's anchor rows of ``embedding`` are never read (the anchors replace them); keep them equal
        # to the anchors in every state dict, so that a save/load round trip reproduces it exactly.
        self.register_state_dict_pre_hook(lambda module, *_: module._pin_unused_anchor_rows())
        if config.inference_mode or not initialize:
            return  # the saved weights are loaded next
        strategy = INIT_STRATEGIES[Init(config.init)]
        if config.is_deep:
            if model is None:
                raise InvalidConfigError("A deep prompt's init needs the base model (its keys/values): pass model=.")
            values = strategy.deep_values(config, word_embeddings, model, num_tokens)
        else:
            values = strategy.values(config, word_embeddings, num_tokens)
        check_prompt_tensor(values, hidden, f"The {Init(config.init).value!r} init")
        with torch.no_grad():
            self.embedding.weight.copy_(values)
            if self.num_anchor_tokens:
                self.anchor_values.copy_(values[: self.num_anchor_tokens])  # type: ignore[operator]

    @property
    def _trains_vectors_directly(self) -> bool:
        return self.encoder is None or not any(True for _ in self.encoder.parameters())

    def _pin_unused_anchor_rows(self) -> None:
        if self.num_anchor_tokens and self._trains_vectors_directly:
            with torch.no_grad():
                anchors: torch.Tensor = self.anchor_values  # type: ignore[assignment]
                self.embedding.weight[: self.num_anchor_tokens] = anchors

    def prompt(self) -> torch.Tensor:
        """The final prompt; differentiable with respect to the trained vectors and encoder in training mode."""
        values = self.embedding.weight if self.encoder is None else self.encoder(self.embedding.weight)
        if self.num_anchor_tokens:
            anchors: torch.Tensor = self.anchor_values  # type: ignore[assignment]
            values = torch.cat([anchors.to(values.dtype), values[self.num_anchor_tokens :]])
        return values

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        # PEFT's calling convention: virtual-token indices [batch, n] -> embeddings [batch, n, hidden].
        return self.prompt()[indices]

    # --- what PEFT saves and loads (bound to PEFT's state-dict hooks by ``peft_ext.integration``) ---------------

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            tensors = {PROMPT_KEY: self.prompt().detach().cpu().contiguous()}
            if not self._trains_vectors_directly:
                assert self.encoder is not None
                tensors[TRAINING_STATE_PREFIX + "input_embeddings"] = self.embedding.weight.detach().cpu().clone()
                for name, value in self.encoder.state_dict().items():
                    tensors[f"{TRAINING_STATE_PREFIX}encoder.{name}"] = value.detach().cpu().clone()
        return tensors

    def load_tensors(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load what ``tensors_to_save`` wrote (or a stock prompt adapter's ``prompt_embeddings``)."""
        if PROMPT_KEY not in state_dict:
            raise InvalidAdapterError(f"The adapter weights hold no {PROMPT_KEY!r} tensor: not a soft prompt.")
        prompt = state_dict[PROMPT_KEY]
        if tuple(prompt.shape) != tuple(self.embedding.weight.shape):
            raise HiddenSizeMismatchError(
                f"Saved prompt has shape {tuple(prompt.shape)} but the config expects "
                f"{tuple(self.embedding.weight.shape)} (num_virtual_tokens, hidden size)."
            )
        check_prompt_tensor(prompt, self.embedding.weight.shape[1], "The saved prompt")
        with torch.no_grad():
            if self._trains_vectors_directly:
                self.embedding.weight.copy_(prompt)
            elif TRAINING_STATE_PREFIX + "input_embeddings" in state_dict:
                self._load_training_state(state_dict)
            elif not self.inference_mode:
                raise InvalidAdapterError(
                    f"This {self.reparameterization!r} adapter was saved without its encoder weights (e.g. exported "
                    "or saved by an older release), so its training cannot resume; load it for inference instead."
                )
            else:
                self.encoder = None  # inference needs only the final prompt
                self.embedding.weight.copy_(prompt)
            if self.num_anchor_tokens:
                self.anchor_values.copy_(prompt[: self.num_anchor_tokens])  # type: ignore[operator]

    def _load_training_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        training = {
            k[len(TRAINING_STATE_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(TRAINING_STATE_PREFIX)
        }
        assert self.encoder is not None
        self.embedding.weight.copy_(training.pop("input_embeddings"))
        encoder_state = {k.removeprefix("encoder."): v for k, v in training.items()}
        self.encoder.load_state_dict(encoder_state, strict=True)
