"""Bad input: each case raises its named error and writes nothing, in both stores."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hub_testutils import REPO, make_adapter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hub
from hub import HfStore, Store
from hub.errors import (
    CorruptAdapterError,
    InvalidAdapterError,
    InvalidConstraintError,
    InvalidNameError,
    InvalidVersionError,
    NonFiniteTensorError,
    PickleRefusedError,
    TensorDtypeError,
    TensorShapeError,
)


def assert_nothing_written(store: Store) -> None:
    assert hub.tasks(REPO, store=store) == []
    if isinstance(store, hub.LocalStore):
        assert not (store.root / REPO).exists() or not any(
            p.is_dir() and not p.name.startswith(".") for p in (store.root / REPO).iterdir()
        )
    if isinstance(store, HfStore):
        from huggingface_hub import HfApi

        assert not HfApi(endpoint=store.endpoint).repo_exists(REPO)


def truncate(folder: Path) -> Path:
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-7])
    return folder


def garbage(folder: Path) -> Path:
    (folder / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    return folder


def huge_header(folder: Path) -> Path:
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    return folder


def overlapping(folder: Path) -> Path:
    header = {"prompt_embeddings": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]}}
    header["x"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    blob = json.dumps(header).encode()
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 128)
    return folder


def pickled(folder: Path) -> Path:
    import torch

    (folder / "adapter_model.safetensors").unlink()
    torch.save({"prompt_embeddings": torch.zeros(4, 8)}, folder / "adapter_model.bin")
    return folder


def no_config(folder: Path) -> Path:
    (folder / "adapter_config.json").unlink()
    return folder


def bad_config(folder: Path) -> Path:
    (folder / "adapter_config.json").write_text("[1, 2")
    return folder


CASES = {
    "truncated": (lambda f: truncate(f), CorruptAdapterError),
    "garbage": (lambda f: garbage(f), CorruptAdapterError),
    "huge header": (lambda f: huge_header(f), CorruptAdapterError),
    "overlapping": (lambda f: overlapping(f), CorruptAdapterError),
    "pickle": (lambda f: pickled(f), PickleRefusedError),
    "no config": (lambda f: no_config(f), InvalidAdapterError),
    "bad config": (lambda f: bad_config(f), InvalidAdapterError),
    "3-D prompt": (lambda f: make_adapter(f, values=np.zeros((1, 4, 8), np.float32)), TensorShapeError),
    "rows vs config": (lambda f: make_adapter(f, n=4, values=np.zeros((5, 8), np.float32)), TensorShapeError),
    "width vs config": (lambda f: make_adapter(f, dim=8, values=np.zeros((4, 6), np.float32)), TensorShapeError),
    "int dtype": (lambda f: make_adapter(f, values=np.zeros((4, 8), np.int32)), TensorDtypeError),
    "int extra": (lambda f: make_adapter(f, extra={"steps": np.zeros(2, np.int64)}), TensorDtypeError),
    "NaN": (lambda f: make_adapter(f, values=np.full((4, 8), np.nan, np.float32)), NonFiniteTensorError),
    "Inf in extra": (
        lambda f: make_adapter(f, extra={"encoder.w": np.array([1.0, np.inf], np.float64)}),
        NonFiniteTensorError,
    ),
    "no prompt": (lambda f: make_adapter(f, values=None, extra=None, config={}) and _rename(f), TensorShapeError),
}


def _rename(folder: Path) -> Path:
    from safetensors.numpy import save_file

    save_file({"other": np.zeros((4, 8), np.float32)}, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize("case", list(CASES))
def test_bad_adapters_are_refused_with_nothing_written(store: Store, adapter: Callable[..., Path], case: str) -> None:
    damage, error = CASES[case]
    folder = damage(adapter(seed=1))
    with pytest.raises(error):
        hub.push(folder, REPO, task="coach", store=store)
    assert_nothing_written(store)


def test_pickle_is_accepted_when_allowed_and_stored_as_safetensors(store: Store, adapter: Callable[..., Path]) -> None:
    hub.push(pickled(adapter(seed=1)), REPO, task="coach", store=store, allow_pickle=True)
    folder = hub.pull(REPO, "coach", store=store)
    assert (folder / "adapter_model.safetensors").is_file() and not (folder / "adapter_model.bin").exists()


def test_bf16_and_extra_float_tensors_are_accepted(store: Store, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    folder = make_adapter(tmp_path / "bf16")
    tensors = {"prompt_embeddings": torch.randn(4, 8, dtype=torch.bfloat16), "encoder.w": torch.randn(8, 8).half()}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    assert hub.push(folder, REPO, task="coach", store=store).created


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"task": "../up"}, InvalidNameError),
        ({"task": "a/b"}, InvalidNameError),
        ({"task": "has space"}, InvalidNameError),
        ({"task": "tilde~1"}, InvalidNameError),
        ({"task": "coach", "repo": "org/../x"}, InvalidNameError),
        ({"task": "coach", "repo": "a/b/c"}, InvalidNameError),
        ({"task": "coach", "version": "1.2"}, InvalidVersionError),
        ({"task": "coach", "version": "../1.0.0"}, InvalidVersionError),
        ({"task": "coach", "bump": "tiny"}, InvalidVersionError),
    ],
)
def test_bad_names_are_refused_with_nothing_written(
    store: Store, adapter: Callable[..., Path], kwargs: dict, error: type
) -> None:
    kwargs = dict(kwargs)  # parametrize shares the dict between both stores
    repo = kwargs.pop("repo", REPO)
    with pytest.raises(error):
        hub.push(adapter(seed=1), repo, store=store, **kwargs)
    assert_nothing_written(store)


@pytest.mark.parametrize("spec", ["^1.x", ">=1", "", "1.2", "latest2"])
def test_malformed_constraints_are_refused(store: Store, adapter: Callable[..., Path], spec: str) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=store)
    with pytest.raises(InvalidConstraintError):
        hub.pull(REPO, "coach", spec, store=store)


config_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 10)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["PROMPT_TUNING", "SOFT_PROMPT", "LORA", "CAUSAL_LM", "TEXT", "RANDOM"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
CONFIG_KEYS = [
    "peft_type",
    "task_type",
    "num_virtual_tokens",
    "token_dim",
    "num_transformer_submodules",
    "num_layers",
    "inference_mode",
    "prompt_tuning_init",
    "tokenizer_kwargs",
    "modules_to_save",
    "base_model_name_or_path",
    "other",
]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), config_values, max_size=4))
def test_fuzzed_adapter_configs_are_loadable_by_peft_or_refused_by_name(change: dict) -> None:
    """Whatever the config says, validation either refuses it with a named error or PEFT builds its config."""
    import json

    from peft import PeftConfig

    from peft_ext.adapter_files import check_config

    config = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4, "token_dim": 8} | change
    try:
        accepted = check_config(json.dumps(config, allow_nan=True).encode(), "adapter_config.json")
    except InvalidAdapterError:
        return
    built = PeftConfig.from_peft_type(**accepted)
    assert built.is_prompt_learning and type(built.num_virtual_tokens) is int and built.num_virtual_tokens > 0
