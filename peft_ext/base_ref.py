"""``BaseModelRef``: which base model a soft prompt was trained on, and the check that a model is that one.

The record belongs to the library: :func:`peft_ext.base_models.load_base_model` attaches one to every model it loads,
and ``hub`` stores it in each version's manifest and checks it on pull.

The embedding fingerprint hashes the weights rounded to bfloat16 (round-to-nearest-even, little-endian) with their
shape, so the same checkpoint loaded in float32 or bfloat16 gives the same fingerprint, while any real change to the
embeddings does not. The tokenizer fingerprint hashes the vocabulary (token -> id, added tokens included) and the
special tokens with their ids; the tokenizer class (fast or slow) does not enter it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidBaseModelError

_CHUNK_ROWS = 8192

_STR_FIELDS = (
    "model_id",
    "revision",
    "architecture",
    "embedding_sha256",
    "tokenizer_sha256",
    "package",
    "package_version",
    "file_sha256",
)
_INT_FIELDS = ("hidden_size", "vocab_size")
# Where a loader (``peft_ext.base_models.load_base_model``) records on the model what exactly it loaded.
MODEL_ATTRIBUTE = "peft_ext_base_info"
# Identity evidence: when both sides know one of these and they differ, the models differ.
_STRICT = (
    "architecture",
    "hidden_size",
    "vocab_size",
    "embedding_sha256",
    "tokenizer_sha256",
    "revision",
    "file_sha256",
)


@dataclass(frozen=True)
class BaseModelRef:
    """A base-model reference: id and exact commit (or package version + file hash for the embedded default),
    architecture, sizes and fingerprints of the input embeddings and tokenizer. Unknown fields are ``None``."""

    model_id: str | None = None
    revision: str | None = None
    architecture: str | None = None
    hidden_size: int | None = None
    vocab_size: int | None = None
    embedding_sha256: str | None = None
    tokenizer_sha256: str | None = None
    package: str | None = None
    package_version: str | None = None
    file_sha256: str | None = None

    def attach(self, model: Any) -> None:
        """Record on ``model`` that it is this base model (what its loader knows: package, file hash, commit)."""
        setattr(model, MODEL_ATTRIBUTE, self)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any = None) -> BaseModelRef:
        """Describe a loaded transformers model (a PeftModel is unwrapped to its base model), starting from what its
        loader attached (:meth:`attach`)."""
        if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            model = model.get_base_model()
        attached = getattr(model, MODEL_ATTRIBUTE, None)
        known = attached.to_dict() if isinstance(attached, BaseModelRef) else {}
        config = getattr(model, "config", None)
        weight = model.get_input_embeddings().weight
        architectures = getattr(config, "architectures", None) or [type(model).__name__]
        return cls(
            model_id=public_id(known.get("model_id") or getattr(config, "name_or_path", None) or None),
            revision=known.get("revision") or getattr(config, "_commit_hash", None) or None,
            architecture=str(architectures[0]),
            hidden_size=int(weight.shape[1]),
            vocab_size=int(weight.shape[0]),
            embedding_sha256=embedding_fingerprint(weight),
            tokenizer_sha256=tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
            package=known.get("package"),
            package_version=known.get("package_version"),
            file_sha256=known.get("file_sha256"),
        )

    @classmethod
    def coerce(cls, value: Any, tokenizer: Any = None) -> BaseModelRef:
        """Accept a ``BaseModelRef``, its dict form, or a loaded model; anything else is
        :class:`InvalidBaseModelError`."""
        if isinstance(value, BaseModelRef):
            return value
        if isinstance(value, dict):
            try:
                return cls.from_dict(value)
            except InvalidBaseModelError as exc:
                raise InvalidBaseModelError(f"base_model dict is not a BaseModelRef: {exc}") from None
        embeddings = getattr(value, "get_input_embeddings", None)
        if not callable(embeddings) or isinstance(value, (str, bytes)):
            hint = (
                f" Load it first, e.g. AutoModelForCausalLM.from_pretrained({value!r:.80})."
                if isinstance(value, str)
                else ""
            )
            raise InvalidBaseModelError(
                f"base_model must be a loaded transformers model, a BaseModelRef or its dict, got "
                f"{type(value).__name__}.{hint}"
            )
        if tokenizer is not None and not callable(getattr(tokenizer, "get_vocab", None)):
            raise InvalidBaseModelError(
                f"tokenizer must be a transformers tokenizer (with get_vocab), got {type(tokenizer).__name__}."
            )
        try:
            return cls.from_model(value, tokenizer)
        except (AttributeError, TypeError, IndexError) as exc:
            raise InvalidBaseModelError(
                f"base_model {type(value).__name__} could not be described ({type(exc).__name__}: {exc!s:.120}); "
                "pass the transformers model the adapter was trained on."
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> BaseModelRef:
        """The reference :meth:`to_dict` wrote; a field of the wrong type is :class:`InvalidBaseModelError`."""
        if not isinstance(data, dict):
            raise InvalidBaseModelError(f"base_model must be a JSON object, got {type(data).__name__}.")
        values: dict[str, Any] = {}
        for name in _STR_FIELDS + _INT_FIELDS:
            value = data.get(name)
            kind = int if name in _INT_FIELDS else str
            if value is not None and (type(value) is not kind):
                raise InvalidBaseModelError(f"base_model.{name} must be {kind.__name__} or null, got {value!r}.")
            values[name] = value
        return cls(**values)

    def mismatches(self, actual: BaseModelRef) -> list[str]:
        """Human-readable differences between this (expected) reference and ``actual``; empty if compatible."""
        problems = []
        for name in _STRICT:
            want, got = getattr(self, name), getattr(actual, name)
            if want is not None and got is not None and want != got:
                problems.append(f"{name}: expected {want!r}, got {got!r}")
        same_weights = self.embedding_sha256 is not None and self.embedding_sha256 == actual.embedding_sha256
        expected, got = public_id(self.model_id), public_id(actual.model_id)
        if not same_weights and expected and got and expected != got:
            problems.append(f"model_id: expected {expected!r}, got {got!r}")
        return problems

    @property
    def label(self) -> str:
        """Short text for cards, CLI output and error messages (a local folder by its name, never its path)."""
        name = public_id(self.model_id) or self.package or "unknown model"
        pin = self.revision or self.package_version
        return f"{name}@{pin[:12]}" if pin else name


def public_id(model_id: str | None) -> str | None:
    """A model id fit to record and show: a Hugging Face id as it is, a local folder by its own name only (its path
    says where someone's files are, and would leak into manifests, cards and a server's errors)."""
    if not model_id:
        return model_id
    path = Path(model_id).expanduser()
    if model_id.startswith(("/", ".", "~", "\\")) or "\\" in model_id or path.is_absolute() or path.exists():
        return re.split(r"[\\/]", model_id.rstrip("\\/"))[-1] or model_id
    return model_id


def embedding_fingerprint(weight: Any) -> str:
    """sha256 of a 2-D embedding tensor in canonical form: ``"<rows>x<cols>:"`` then bfloat16 LE bytes, row-major."""
    import torch  # here, so that importing the record (hub's manifest reads it) loads no torch

    weight = weight.detach()
    digest = hashlib.sha256(f"{weight.shape[0]}x{weight.shape[1]}:".encode())
    for start in range(0, weight.shape[0], _CHUNK_ROWS):
        rows = weight[start : start + _CHUNK_ROWS].to("cpu", torch.bfloat16).contiguous()
        digest.update(rows.view(torch.int16).numpy().astype("<i2", copy=False).tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of a tokenizer's vocabulary and special tokens, canonical JSON."""
    vocab = sorted((int(i), str(t)) for t, i in tokenizer.get_vocab().items())
    specials = sorted(
        (str(t), tokenizer.convert_tokens_to_ids(t)) for t in getattr(tokenizer, "all_special_tokens", [])
    )
    roles = {role: getattr(tokenizer, f"{role}_token_id", None) for role in ("bos", "eos", "pad", "unk", "sep", "cls")}
    payload = json.dumps({"vocab": vocab, "special": specials, "roles": roles}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(payload.encode()).hexdigest()
