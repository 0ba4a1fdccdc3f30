"""``diff``: per-token cosine and norms, nearest vocabulary tokens with a model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hub_testutils import REPO

import hub
from hub import Store
from hub.errors import InvalidNameError, TensorShapeError


def test_diff_folders(adapter: Callable[..., Path]) -> None:
    base = np.arange(32, dtype=np.float32).reshape(4, 8) + 1
    other = base.copy()
    other[1] *= -2
    result = hub.diff(adapter(values=base), adapter(values=other))
    assert result.shape_a == result.shape_b == (4, 8)
    cosines = [t.cosine for t in result.tokens]
    assert cosines[0] == pytest.approx(1.0) and cosines[1] == pytest.approx(-1.0)
    assert result.tokens[1].norm_b == pytest.approx(2 * result.tokens[1].norm_a)
    assert result.mean_cosine == pytest.approx(0.5)
    assert result.to_dict()["tokens"][0]["nearest_a"] == []


def test_diff_stored_versions_with_nearest_tokens(store: Store, adapter: Callable[..., Path], tiny_llama) -> None:  # noqa: ANN001,E501
    build, tokenizer = tiny_llama
    model = build()
    vocab = model.get_input_embeddings().weight.detach().numpy()
    hub.push(adapter(values=vocab[[5, 6, 7, 8]].copy()), REPO, task="coach", store=store)
    hub.push(adapter(values=vocab[[9, 6, 7, 8]].copy()), REPO, task="coach", store=store)
    result = hub.diff(f"{REPO}:coach@1.0.0", f"{REPO}:coach", model=model, tokenizer=tokenizer, top_k=2, store=store)
    assert result.tokens[0].nearest_a[0] == tokenizer.convert_ids_to_tokens(5)
    assert result.tokens[0].nearest_b[0] == tokenizer.convert_ids_to_tokens(9)
    assert result.tokens[1].cosine == pytest.approx(1.0)


def test_diff_refuses_other_widths_and_bad_specs(adapter: Callable[..., Path]) -> None:
    with pytest.raises(TensorShapeError):
        hub.diff(adapter(dim=8), adapter(dim=6))
    with pytest.raises(InvalidNameError):
        hub.diff(adapter(), "not-a-folder-or-spec")
