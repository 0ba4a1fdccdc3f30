"""Helpers shared by the hub tests, imported by name (importable from worker processes too)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors.numpy import save_file

if TYPE_CHECKING:
    import pytest

    from hub import Store

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


def edit_stored(
    store: Store, request: pytest.FixtureRequest, version: str, edit: Callable[[dict[str, bytes]], None]
) -> Store:
    """Edit the stored files of ``coach <version>`` (name -> bytes, in place) where the store keeps them.

    Returns a store to pull with that has no cached copy: the same LocalStore, or an HfStore with a fresh cache.
    """
    from fake_hub_server import FakeHub  # here, not at the top: workers import this module without the hub client

    from hub import HfStore, LocalStore

    if isinstance(store, LocalStore):
        folder = store.root / REPO / "coach" / version
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        edit(files)
        for p in folder.iterdir():
            p.unlink()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return store
    server: FakeHub = request.getfixturevalue("fake_hub")
    commit = server.repos[REPO].commits[server.repos[REPO].tags[f"coach/v{version}"]]
    prefix = f"coach/{version}/"
    files = {k[len(prefix) :]: v for k, v in commit.files.items() if k.startswith(prefix)}
    edit(files)
    commit.files = {k: v for k, v in commit.files.items() if not k.startswith(prefix)}
    commit.files.update({prefix + name: data for name, data in files.items()})
    tmp: Path = request.getfixturevalue("tmp_path")
    return HfStore(
        endpoint=server.url, token=TOKEN, cache_dir=tmp / f"fresh_{len(list(tmp.iterdir()))}", retry_wait_s=0.01
    )
