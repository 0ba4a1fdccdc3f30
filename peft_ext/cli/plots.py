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


def plot_before_after(
    before: Mapping[str, Mapping[str, float]],
    after: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike[str],
    title: str = "Held-out loss before and after training",
) -> str:
    """Grouped bars: for every row (e.g. an adapter) and column (e.g. a dataset), the value before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(after)
    columns = list(next(iter(after.values())))
    figure, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.8), sharey=True, squeeze=False)
    for axis, column in zip(axes[0], columns, strict=True):
        positions = range(len(rows))
        axis.bar([p - 0.2 for p in positions], [before[r][column] for r in rows], width=0.4, label="before")
        axis.bar([p + 0.2 for p in positions], [after[r][column] for r in rows], width=0.4, label="after")
        axis.set_xticks(list(positions), rows)
        axis.set_title(f"on {column} data")
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("loss (lower = closer)")
    axes[0][0].legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return os.fspath(path)
