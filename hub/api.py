"""The hub calls: push, pull, versions, tasks, show, yank. ``diff`` lives in :mod:`hub.compare`."""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_ext.adapter_files import (
    DEEP_LAYOUT_FIELDS,
    AdapterFiles,
    DeepPrompt,
    PromptKind,
    check_deep_prompt,
    deep_layout,
    folder_path,
    read_adapter_folder,
)
from peft_ext.base_ref import BaseModelRef

from .errors import (
    BaseModelMismatchError,
    HiddenSizeMismatchError,
    IntegrityError,
    InvalidArgumentError,
    ManifestError,
    ManifestSchemaError,
    NoMatchingVersionError,
    NotFoundError,
)
from .manifest import Manifest, check_metadata, read_manifest, verify_folder
from .names import check_repo, check_task
from .stores.base import PublishResult, Store, VersionEntry
from .stores.local import LocalStore
from .versions import BUMPS, FIRST_VERSION, Constraint, InvalidVersionError, SemVer


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

    Everything the push will write (adapter config as PEFT loads it, tensors, metadata, the manifest itself) is
    validated before the store is touched: a bad input raises its named error and leaves nothing behind.
    """
    check_repo(repo)
    check_task(task)
    pinned = None if version is None else SemVer.parse(version)
    if not isinstance(bump, str) or bump not in BUMPS:
        raise InvalidVersionError(f"Invalid bump {bump!r}: expected one of {', '.join(BUMPS)}.")
    target = _store(store)
    check_metadata(metrics, training_data_hash)
    payload = _payload(source, allow_pickle)
    base = None if base_model is None else BaseModelRef.coerce(base_model, tokenizer)
    hidden = payload.hidden_size
    if base is not None and base.hidden_size is not None and hidden is not None and base.hidden_size != hidden:
        raise HiddenSizeMismatchError(
            f"The adapter's prompt is {hidden} wide but the base model's hidden size is "
            f"{base.hidden_size}: it was not trained on this model."
        )
    _check_layout(payload, base_model, "The adapter")
    adapter = {
        "peft_type": payload.config.get("peft_type"),
        "kind": payload.kind.value,
        "num_virtual_tokens": payload.num_virtual_tokens,
        "token_dim": payload.token_dim,
    }
    if payload.kind is PromptKind.DEEP:
        adapter.update(zip(DEEP_LAYOUT_FIELDS, deep_layout(payload.config), strict=True))

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

    make_manifest(pinned or FIRST_VERSION, None).to_json()  # the manifest validates itself before any write
    return target.publish(repo, task, payload.files, make_manifest, pinned, bump)


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

    The folder must hold exactly the manifest and the files it lists, with their hashes. A cached copy that fails
    this is evicted and downloaded once more; if the fresh copy fails too, the stored version itself is damaged.
    """
    store = _store(store)
    constraint = Constraint.parse(version)
    expected = None if base_model is None else BaseModelRef.coerce(base_model, tokenizer)
    # An exact version needs no listing: with a cached copy the pull touches no network at all.
    if constraint.exact and constraint.low is not None:
        resolved = constraint.low
        check_repo(repo)
        check_task(task)
    else:
        resolved = resolve(repo, task, version, store=store)
    folder = store.fetch(repo, task, resolved)
    try:
        manifest = _verified(folder, task, resolved)
    except ManifestSchemaError:
        raise
    except (IntegrityError, ManifestError) as first:
        if not store.evict(repo, task, resolved):
            raise type(first)(f"{first} The store is damaged: yank {task} {resolved} and push a new version.") from None
        folder = store.fetch(repo, task, resolved)
        try:
            manifest = _verified(folder, task, resolved)
        except (IntegrityError, ManifestError) as again:
            raise type(again)(
                f"{again} The cached copy was evicted and downloaded again, with the same result: the stored "
                f"version is damaged. Yank {task} {resolved} and push a new version."
            ) from None
    if expected is not None:
        _check_base(manifest, expected, allow_mismatch)
        if not allow_mismatch:
            _check_layout(read_adapter_folder(folder, deep=True), base_model, f"{task} {resolved}")
    return folder


def _verified(folder: Path, task: str, version: SemVer) -> Manifest:
    manifest = read_manifest(folder)
    if manifest.task != task or manifest.version != version:
        raise IntegrityError(f"{folder} holds {manifest.task} {manifest.version}, not {task} {version}.")
    verify_folder(folder, manifest)
    read_adapter_folder(folder, deep=True)  # the bytes match the manifest; they must also be a usable soft prompt
    return manifest


def resolve(repo: str, task: str, version: str = "latest", *, store: Store | None = None) -> SemVer:
    """The version a constraint picks (yanked versions only when asked for exactly)."""
    constraint = Constraint.parse(version)
    check_repo(repo)
    check_task(task)
    entries = _store(store).versions(repo, task)
    chosen = constraint.select((e.version, e.yanked) for e in entries)
    if chosen is None:
        available = ", ".join(f"{e.version}{' (yanked)' if e.yanked else ''}" for e in entries) or "none"
        raise NoMatchingVersionError(f"{repo}: no version of {task!r} matches {constraint}; available: {available}.")
    return chosen


def versions(repo: str, task: str, *, store: Store | None = None) -> list[VersionEntry]:
    """Every version of ``task``, ascending, yanked ones included and flagged."""
    return _store(store).versions(check_repo(repo), check_task(task))


def tasks(repo: str, *, store: Store | None = None) -> list[str]:
    """The task names in ``repo``."""
    return _store(store).tasks(check_repo(repo))


def show(repo: str, task: str, version: str = "latest", *, store: Store | None = None) -> VersionDetails:
    """The manifest of the version ``version`` resolves to, with its yank status."""
    store = _store(store)
    resolved = resolve(repo, task, version, store=store)
    entry = next(e for e in store.versions(repo, task) if e.version == resolved)
    return VersionDetails(read_manifest(pull(repo, task, str(resolved), store=store)), entry.yanked, entry.yank_reason)


def yank(
    repo: str, task: str, version: str, *, reason: str | None = None, undo: bool = False, store: Store | None = None
) -> None:
    """Retire an exact version: constraints skip it, an exact pull still works, its bytes stay. ``undo`` restores."""
    store = _store(store)
    exact = SemVer.parse(version)
    if reason is not None and not isinstance(reason, str):
        raise InvalidArgumentError(f"reason must be a string or None, got {type(reason).__name__}.")
    if exact not in {e.version for e in store.versions(check_repo(repo), check_task(task))}:
        raise NotFoundError(f"{repo}: {task} {exact} does not exist; nothing to yank.")
    store.set_yanked(repo, task, exact, not undo, reason)


def repair_card(repo: str, *, store: Store | None = None) -> None:
    """Rebuild ``repo``'s model card from the versions the store holds (after a push or yank was interrupted)."""
    _store(store).refresh_card(check_repo(repo))


def _store(store: Any) -> Store:
    if store is None:
        return LocalStore()
    if not isinstance(store, Store):
        raise InvalidArgumentError(f"store must be a hub Store (LocalStore, HfStore), got {type(store).__name__}.")
    return store


def _payload(source: Any, allow_pickle: bool) -> AdapterFiles:
    if not callable(getattr(source, "save_pretrained", None)) or isinstance(source, (str, Path)):
        return read_adapter_folder(folder_path(source), allow_pickle=allow_pickle, deep=True)
    active = getattr(source, "active_adapter", "default")
    with tempfile.TemporaryDirectory(prefix="peft_ext_push_") as tmp:
        source.save_pretrained(tmp, selected_adapters=[active], safe_serialization=True)
        folder = Path(tmp) if active == "default" else Path(tmp) / str(active)  # PEFT nests non-default adapters
        return read_adapter_folder(folder, allow_pickle=False, deep=True)


def _check_layout(adapter: AdapterFiles, base_model: Any, what: str) -> None:
    """A deep prompt fits only a base with its layer count, key/value heads and head size: checked against a loaded
    model (a BaseModelRef alone is checked by its fingerprints)."""
    if adapter.kind is not PromptKind.DEEP or not callable(getattr(base_model, "get_input_embeddings", None)):
        return
    if hasattr(base_model, "get_base_model") and hasattr(base_model, "peft_config"):
        base_model = base_model.get_base_model()
    from peft_ext.engine import PromptEngine

    prompt = adapter.loaded()
    assert isinstance(prompt, DeepPrompt)
    check_deep_prompt(prompt, PromptEngine.of(base_model).kv_shapes(), what)


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
