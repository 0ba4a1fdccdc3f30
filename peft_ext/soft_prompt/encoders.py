"""Reparameterization encoders: how trained vectors ``[n, hidden]`` become the prompt ``[n, hidden]``.

One small module per ``SoftPromptConfig.reparameterization``; each is built as ``cls(hidden_size, config)``. An
encoder without parameters (``direct``) trains the vectors themselves.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import SoftPromptConfig


class Reparameterization(StrEnum):
    """How the trained vectors become the prompt (``SoftPromptConfig.reparameterization``)."""

    DIRECT = "direct"
    MLP = "mlp"
    LSTM = "lstm"
    RESIDUAL = "residual"


class DirectEncoder(nn.Identity):
    """The trained vectors are the prompt (Lester et al. prompt tuning)."""

    def __init__(self, hidden_size: int, config: SoftPromptConfig) -> None:
        super().__init__()


class MLPEncoder(nn.Module):
    """P-tuning's MLP encoder (Liu et al.): two layers with a ReLU."""

    def __init__(self, hidden_size: int, config: SoftPromptConfig) -> None:
        super().__init__()
        width = config.encoder_hidden_size or hidden_size
        self.layers = nn.Sequential(
            nn.Linear(hidden_size, width),
            nn.ReLU(),
            nn.Dropout(config.encoder_dropout),
            nn.Linear(width, hidden_size),
        )

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.layers(vectors)


class LSTMEncoder(nn.Module):
    """P-tuning's bidirectional LSTM followed by an MLP head."""

    def __init__(self, hidden_size: int, config: SoftPromptConfig) -> None:
        super().__init__()
        width = config.encoder_hidden_size or hidden_size
        self.lstm = nn.LSTM(
            input_size=hidden_size,
            hidden_size=width,
            num_layers=config.encoder_num_layers,
            dropout=config.encoder_dropout if config.encoder_num_layers > 1 else 0.0,
            bidirectional=True,
            batch_first=True,
        )
        self.head = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU(), nn.Linear(width, hidden_size))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(vectors.unsqueeze(0))
        return self.head(output.squeeze(0))


class ResidualEncoder(nn.Module):
    """Residual Prompt Tuning (Razdaibiedina et al.): ``x + MLP(x)``.

    The output layer starts at zero, so at initialisation the prompt equals its init values exactly (a text init stays
    the text) and training learns a correction. The paper's LayerNorm on the correction is left out: on a zero-started
    correction it would amplify the first gradients by 1/sqrt(eps).
    """

    def __init__(self, hidden_size: int, config: SoftPromptConfig) -> None:
        super().__init__()
        width = config.encoder_hidden_size or hidden_size
        self.down = nn.Linear(hidden_size, width)
        self.dropout = nn.Dropout(config.encoder_dropout)
        self.up = nn.Linear(width, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors + self.up(self.dropout(torch.relu(self.down(vectors))))


ENCODERS: dict[Reparameterization, type[nn.Module]] = {
    Reparameterization.DIRECT: DirectEncoder,
    Reparameterization.MLP: MLPEncoder,
    Reparameterization.LSTM: LSTMEncoder,
    Reparameterization.RESIDUAL: ResidualEncoder,
}
