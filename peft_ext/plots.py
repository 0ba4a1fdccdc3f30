"""Loss curves as PNG (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence


def plot_losses(
    curves: Mapping[str, Sequence[float]], path: str | os.PathLike[str], title: str = "Training loss"
) -> str:
    """One line per curve, loss against step; returns the path written."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for name, losses in curves.items():
        axes.plot(range(1, len(losses) + 1), losses, label=name, marker="." if len(losses) < 60 else None)
    axes.set(xlabel="step", ylabel="loss", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return os.fspath(path)
