"""The ``peft_ext.publish`` entry point: lets ``peft-ext train --push`` share what it trained without peft_ext
importing this package."""

from __future__ import annotations

from typing import Any

from . import api
from .stores.local import LocalStore


def publish(
    folder: str,
    repo: str,
    *,
    task: str,
    version: str | None,
    bump: str,
    store_root: str | None,
    base_model: Any,
    tokenizer: Any,
    metrics: dict[str, Any] | None,
) -> str:
    """Push ``folder`` to the local store; returns ``repo:task@version`` of what was pushed."""
    result = api.push(
        folder,
        repo,
        task=task,
        version=version,
        bump=bump,
        store=LocalStore(store_root),
        base_model=base_model,
        tokenizer=tokenizer,
        metrics=metrics,
    )
    return f"{repo}:{task}@{result.version}"
