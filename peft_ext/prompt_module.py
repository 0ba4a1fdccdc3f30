"""``SoftPromptEncoder``: the prompt module PEFT builds for a ``SoftPromptConfig`` adapter.

PEFT reads ``embedding.weight`` as the prompt in inference mode, so a loaded adapter holds only the final prompt and
builds no encoder. A trainable one holds the trained vectors in ``embedding``, the reparameterization encoder, and the
frozen anchor values. Saving writes the final prompt as ``prompt_embeddings`` (what stock PEFT reads) plus, for
reparameterized prompts, the training state under ``TRAINING_STATE_PREFIX`` so training resumes where it stopped.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BasePromptEncoder
from torch import nn

from .config import SoftPromptConfig
from .encoders import ENCODERS
from .errors import AdapterLoadError, HiddenSizeMismatchError
from .init import INITIALIZERS
from .sources import check_prompt_tensor

TRAINING_STATE_PREFIX = "soft_prompt_training."


class SoftPromptEncoder(BasePromptEncoder):
    """Holds one soft prompt; ``prompt()`` returns it as ``[num_virtual_tokens, hidden]``."""

    def __init__(self, config: SoftPromptConfig, word_embeddings: nn.Embedding, initialize: bool = True) -> None:
        super().__init__()
        num_tokens, hidden = config.num_virtual_tokens, config.token_dim
        self.reparameterization = config.reparameterization
        self.num_anchor_tokens = config.num_anchor_tokens
        self.embedding = nn.Embedding(num_tokens, hidden)
        self.encoder: nn.Module | None = None
        if config.inference_mode:
            return
        self.encoder = ENCODERS[config.reparameterization](hidden, config)
        values = self._initial_values(config, word_embeddings) if initialize else self.embedding.weight.detach()
        with torch.no_grad():
            self.embedding.weight.copy_(values)
        self.register_buffer("anchor_values", values[: self.num_anchor_tokens].clone())

    @staticmethod
    def _initial_values(config: SoftPromptConfig, word_embeddings: nn.Embedding) -> torch.Tensor:
        values = INITIALIZERS[config.init](config, word_embeddings, config.num_virtual_tokens)
        check_prompt_tensor(values, config.token_dim, f"The {config.init!r} init")
        return values

    def prompt(self) -> torch.Tensor:
        """The final prompt; differentiable with respect to the trained vectors and encoder in training mode."""
        if self.encoder is None:
            return self.embedding.weight
        values = self.encoder(self.embedding.weight)
        if self.num_anchor_tokens:
            anchors: torch.Tensor = self.anchor_values  # type: ignore[assignment]
            values = torch.cat([anchors.to(values.dtype), values[self.num_anchor_tokens :]])
        return values

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        # PEFT's calling convention: virtual-token indices [batch, n] -> embeddings [batch, n, hidden].
        return self.prompt()[indices]

    # --- PEFT's state-dict hooks -----------------------------------------------------------------------------------

    @classmethod
    def _get_adapter_state_dict(
        cls, model: Any, config: Any, adapter_name: str, state_dict: Any, unwanted_adapter_names: Any
    ) -> dict[str, torch.Tensor]:
        return model.prompt_encoder[adapter_name].tensors_to_save()

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            tensors = {"prompt_embeddings": self.prompt().detach().cpu().contiguous()}
            if self.encoder is not None and self.reparameterization != "direct":
                tensors[TRAINING_STATE_PREFIX + "input_embeddings"] = self.embedding.weight.detach().cpu().clone()
                for name, value in self.encoder.state_dict().items():
                    tensors[f"{TRAINING_STATE_PREFIX}encoder.{name}"] = value.detach().cpu().clone()
        return tensors

    def _load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        if "prompt_embeddings" not in state_dict:
            raise AdapterLoadError("The adapter weights hold no 'prompt_embeddings' tensor: not a soft prompt.")
        prompt = state_dict["prompt_embeddings"]
        if tuple(prompt.shape) != tuple(self.embedding.weight.shape):
            raise HiddenSizeMismatchError(
                f"Saved prompt has shape {tuple(prompt.shape)} but the config expects "
                f"{tuple(self.embedding.weight.shape)} (num_virtual_tokens, hidden size)."
            )
        check_prompt_tensor(prompt, self.embedding.weight.shape[1], "The saved prompt")
        with torch.no_grad():
            if self.encoder is None or self.reparameterization == "direct":
                self.embedding.weight.copy_(prompt)
            else:
                self._load_training_state(state_dict)
            if self.encoder is not None:
                self.anchor_values.copy_(prompt[: self.num_anchor_tokens])  # type: ignore[operator]

    def _load_training_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        training = {
            k[len(TRAINING_STATE_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(TRAINING_STATE_PREFIX)
        }
        if "input_embeddings" not in training:
            raise AdapterLoadError(
                f"This {self.reparameterization!r} adapter was saved without its encoder weights (e.g. exported or "
                "saved by stock PEFT), so its training cannot resume; load it for inference instead."
            )
        assert self.encoder is not None
        self.embedding.weight.copy_(training.pop("input_embeddings"))
        encoder_state = {k.removeprefix("encoder."): v for k, v in training.items()}
        self.encoder.load_state_dict(encoder_state, strict=True)
