"""``diff``: how two soft prompts differ, token by token."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peft_ext.adapter_files import read_adapter_folder
from peft_ext.errors import TensorShapeError

from .errors import InvalidArgumentError
from .names import parse_reference
from .stores.base import Store


@dataclass(frozen=True)
class TokenDiff:
    """One virtual token: cosine between the two rows, their norms, and (with a model) the nearest vocab tokens."""

    index: int
    cosine: float | None
    norm_a: float
    norm_b: float
    nearest_a: list[str] = field(default_factory=list)
    nearest_b: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DiffResult:
    shape_a: tuple[int, int]
    shape_b: tuple[int, int]
    tokens: list[TokenDiff]
    mean_cosine: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diff(
    a: str | Path,
    b: str | Path,
    *,
    model: Any = None,
    tokenizer: Any = None,
    top_k: int = 5,
    store: Store | None = None,
) -> DiffResult:
    """Compare two soft prompts given as folders or ``"repo:task@version"`` (pulled from ``store``).

    Rows are compared pairwise up to the shorter prompt. With ``model`` (its input embeddings) each row also gets
    its ``top_k`` nearest vocabulary tokens by cosine, decoded with ``tokenizer`` when given. Deep prompts compare
    each virtual token's keys/values in every layer, and have no nearest tokens.
    """
    if type(top_k) is not int or top_k < 0:
        raise InvalidArgumentError(f"top_k must be an integer >= 0 (0: no nearest tokens), got {top_k!r:.40}.")
    rows_a, rows_b = _prompt(a, store), _prompt(b, store)
    if rows_a.shape[1] != rows_b.shape[1]:
        raise TensorShapeError(f"Cannot diff prompts of widths {rows_a.shape[1]} and {rows_b.shape[1]}.")
    norms_a, norms_b = np.linalg.norm(rows_a, axis=1), np.linalg.norm(rows_b, axis=1)
    vocab = _vocab(model)
    if vocab is not None and vocab.shape[1] != rows_a.shape[1]:  # deep prompts: keys/values, not embeddings
        vocab = None
    near_a, near_b = _nearest(rows_a, vocab, tokenizer, top_k), _nearest(rows_b, vocab, tokenizer, top_k)
    tokens = []
    for i in range(min(len(rows_a), len(rows_b))):
        denom = float(norms_a[i] * norms_b[i])
        cosine = float(rows_a[i] @ rows_b[i]) / denom if denom > 0 else None
        tokens.append(TokenDiff(i, cosine, float(norms_a[i]), float(norms_b[i]), near_a[i], near_b[i]))
    cosines = [t.cosine for t in tokens if t.cosine is not None]
    mean = float(np.mean(cosines)) if cosines else None
    return DiffResult(
        (int(rows_a.shape[0]), int(rows_a.shape[1])), (int(rows_b.shape[0]), int(rows_b.shape[1])), tokens, mean
    )


def _prompt(source: str | Path, store: Store | None) -> np.ndarray:
    if not isinstance(source, (str, Path)):
        raise InvalidArgumentError(f"diff takes folders or 'repo:task@version' strings, got {type(source).__name__}.")
    folder = Path(source)
    if not folder.is_dir():
        from .api import pull

        repo, task, version = parse_reference(str(source))
        folder = pull(repo, task, version, store=store)
    return read_adapter_folder(folder, deep=True).prompt.float().numpy()


def _vocab(model: Any) -> np.ndarray | None:
    if model is None:
        return None
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()
    weight = model.get_input_embeddings().weight.detach().float().cpu().numpy()
    norms = np.linalg.norm(weight, axis=1, keepdims=True)
    return weight / np.maximum(norms, 1e-12)


def _nearest(rows: np.ndarray, vocab: np.ndarray | None, tokenizer: Any, top_k: int) -> list[list[str]]:
    if vocab is None or top_k <= 0:
        return [[] for _ in rows]
    if vocab.shape[1] != rows.shape[1]:
        raise TensorShapeError(f"The model's embeddings are {vocab.shape[1]} wide, the prompt {rows.shape[1]}.")
    unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    ids = np.argsort(-(unit @ vocab.T), axis=1)[:, :top_k]
    if tokenizer is None:
        return [[f"#{int(i)}" for i in row] for row in ids]
    return [[str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in row])] for row in ids]
