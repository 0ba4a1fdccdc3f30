"""The hub calls: push, pull, versions, tasks, show, yank. ``diff`` lives in :mod:`hub.diff`."""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base_ref import BaseModelRef
from .errors import (
    BaseModelMismatchError,
    IntegrityError,
    NoMatchingVersionError,
    NotFoundError,
    TensorShapeError,
)
from .manifest import Manifest, read_manifest, verify_folder
from .names import check_repo, check_task
from .stores.base import PublishResult, Store, VersionEntry
from .stores.local import LocalStore
from .validate import AdapterPayload, load_adapter_folder
from .versions import BUMPS, Constraint, InvalidVersionError, SemVer


@dataclass(frozen=True)
class VersionDetails:
    """``show``'s answer: the manifest of one version and whether it is yanked."""

    manifest: Manifest
    yanked: bool
    yank_reason: str | None


def push(
    source: Any,
    repo: str,
    *,
    task: str,
    version: str | None = None,
    bump: str = "patch",
    store: Store | None = None,
    base_model: Any = None,
    tokenizer: Any = None,
    metrics: dict[str, Any] | None = None,
    training_data_hash: str | None = None,
    allow_pickle: bool = False,
) -> PublishResult:
    """Push an adapter folder (or a PeftModel, saved first) as a new immutable version of ``task`` in ``repo``.

    ``version`` pins the version; otherwise ``bump`` ("patch", "minor", "major") the highest one (first: 1.0.0).
    ``base_model`` (a model or :class:`BaseModelRef`) is recorded in the manifest; pushing the same bytes under an
    existing version is a no-op (``created=False``), other bytes raise :class:`VersionExistsError`.
    """
    check_repo(repo)
    check_task(task)
    pinned = None if version is None else SemVer.parse(version)
    if bump not in BUMPS:
        raise InvalidVersionError(f"Invalid bump {bump!r}: expected one of {', '.join(BUMPS)}.")
    payload = _payload(source, allow_pickle)
    base = None if base_model is None else BaseModelRef.coerce(base_model, tokenizer)
    if base is not None and base.hidden_size is not None and base.hidden_size != payload.token_dim:
        raise TensorShapeError(
            f"The adapter's prompt is {payload.token_dim} wide but the base model's hidden size is "
            f"{base.hidden_size}: it was not trained on this model."
        )
    adapter = {
        "peft_type": payload.config.get("peft_type"),
        "num_virtual_tokens": payload.num_virtual_tokens,
        "token_dim": payload.token_dim,
    }

    def make_manifest(chosen: SemVer, parent: SemVer | None) -> Manifest:
        return Manifest.build(
            task=task,
            version=chosen,
            files=payload.files,
            adapter=adapter,
            base_model=base,
            parent_version=parent,
            training_data_hash=training_data_hash,
            metrics=metrics,
        )

    return (store or LocalStore()).publish(repo, task, payload.files, make_manifest, pinned, bump)


def pull(
    repo: str,
    task: str,
    version: str = "latest",
    *,
    base_model: Any = None,
    tokenizer: Any = None,
    allow_mismatch: bool = False,
    store: Store | None = None,
) -> Path:
    """Resolve ``version`` (``"1.2.0"``, ``"^1.2"``, ``"~1.2"``, ``"latest"``), fetch it, verify every file's hash,
    and return a local folder for ``PeftModel.from_pretrained``.

    With ``base_model`` (a model or :class:`BaseModelRef`), refuse a base that differs from the one recorded at push
    time with :class:`BaseModelMismatchError`, unless ``allow_mismatch=True`` (then it only warns).
    """
    store = store or LocalStore()
    constraint = Constraint.parse(version)
    # An exact version needs no listing: with a cached copy the pull touches no network at all.
    if constraint.exact and constraint.low is not None:
        resolved = constraint.low
        check_repo(repo)
        check_task(task)
    else:
        resolved = resolve(repo, task, version, store=store)
    folder = store.fetch(repo, task, resolved)
    manifest = read_manifest(folder)
    if manifest.task != task or manifest.version != resolved:
        raise IntegrityError(
            f"{folder} holds {manifest.task} {manifest.version}, not {task} {resolved}: the store is damaged."
        )
    verify_folder(folder, manifest)
    if base_model is not None:
        _check_base(manifest, BaseModelRef.coerce(base_model, tokenizer), allow_mismatch)
    return folder


def resolve(repo: str, task: str, version: str = "latest", *, store: Store | None = None) -> SemVer:
    """The version a constraint picks (yanked versions only when asked for exactly)."""
    constraint = Constraint.parse(version)
    check_repo(repo)
    check_task(task)
    entries = (store or LocalStore()).versions(repo, task)
    chosen = constraint.select((e.version, e.yanked) for e in entries)
    if chosen is None:
        available = ", ".join(f"{e.version}{' (yanked)' if e.yanked else ''}" for e in entries) or "none"
        raise NoMatchingVersionError(f"{repo}: no version of {task!r} matches {constraint}; available: {available}.")
    return chosen


def versions(repo: str, task: str, *, store: Store | None = None) -> list[VersionEntry]:
    """Every version of ``task``, ascending, yanked ones included and flagged."""
    return (store or LocalStore()).versions(check_repo(repo), check_task(task))


def tasks(repo: str, *, store: Store | None = None) -> list[str]:
    """The task names in ``repo``."""
    return (store or LocalStore()).tasks(check_repo(repo))


def show(repo: str, task: str, version: str = "latest", *, store: Store | None = None) -> VersionDetails:
    """The manifest of the version ``version`` resolves to, with its yank status."""
    store = store or LocalStore()
    resolved = resolve(repo, task, version, store=store)
    entry = next(e for e in store.versions(repo, task) if e.version == resolved)
    return VersionDetails(read_manifest(store.fetch(repo, task, resolved)), entry.yanked, entry.yank_reason)


def yank(
    repo: str, task: str, version: str, *, reason: str | None = None, undo: bool = False, store: Store | None = None
) -> None:
    """Retire an exact version: constraints skip it, an exact pull still works, its bytes stay. ``undo`` restores."""
    store = store or LocalStore()
    exact = SemVer.parse(version)
    if exact not in {e.version for e in store.versions(check_repo(repo), check_task(task))}:
        raise NotFoundError(f"{repo}: {task} {exact} does not exist; nothing to yank.")
    store.set_yanked(repo, task, exact, not undo, reason)


def _payload(source: Any, allow_pickle: bool) -> AdapterPayload:
    if isinstance(source, (str, Path)):
        return load_adapter_folder(source, allow_pickle=allow_pickle)
    if not hasattr(source, "save_pretrained"):
        raise TypeError(f"push source must be an adapter folder or a PeftModel, got {type(source).__name__}.")
    active = getattr(source, "active_adapter", "default")
    with tempfile.TemporaryDirectory(prefix="peft_ext_push_") as tmp:
        source.save_pretrained(tmp, selected_adapters=[active], safe_serialization=True)
        folder = Path(tmp) if active == "default" else Path(tmp) / str(active)  # PEFT nests non-default adapters
        return load_adapter_folder(folder, allow_pickle=False)


def _check_base(manifest: Manifest, actual: BaseModelRef, allow_mismatch: bool) -> None:
    if manifest.base_model is None:
        warnings.warn(
            f"{manifest.task} {manifest.version} records no base model; the one given cannot be verified.",
            stacklevel=3,
        )
        return
    problems = manifest.base_model.mismatches(actual)
    if not problems:
        return
    message = (
        f"{manifest.task} {manifest.version} was trained on {manifest.base_model.label}, not on the model given ("
        + "; ".join(problems)
        + ")."
    )
    if not allow_mismatch:
        raise BaseModelMismatchError(message + " Load the right base model, or pass allow_mismatch=True.")
    warnings.warn(message, stacklevel=3)
