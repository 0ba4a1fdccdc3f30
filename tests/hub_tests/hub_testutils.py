"""Helpers shared by the hub tests (importable from worker processes too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

TOKEN = "hf_TESTSECRETtoken0123456789"
REPO = "org/prompts"


def make_adapter(
    folder: str | Path,
    seed: int = 0,
    n: int = 4,
    dim: int = 8,
    *,
    values: np.ndarray | None = None,
    extra: dict[str, np.ndarray] | None = None,
    config: dict | None = None,
) -> Path:
    """A minimal PEFT prompt-tuning adapter folder with tiny tensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": n,
        "token_dim": dim,
        "num_transformer_submodules": 1,
    }
    cfg.update(config or {})
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    prompt = values if values is not None else np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    save_file({"prompt_embeddings": prompt, **(extra or {})}, str(folder / "adapter_model.safetensors"))
    return folder
