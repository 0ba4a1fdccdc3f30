"""The manifest written beside every version: ``peft_ext_manifest.json``.

Schema 1 (JSON object)::

    schema_version   1
    task, version    the task name and its semantic version
    parent_version   the highest version of the task when this one was pushed, or null
    created_at       UTC ISO-8601 time of the push
    base_model       BaseModelRef fields, or null when unknown
    adapter          {peft_type, kind, num_virtual_tokens, token_dim}; kind is "input" (input embeddings) or
                     "deep" (keys/values in every layer), which adds num_layers, num_key_value_heads, head_dim
    files            {file name: {sha256, size}} for every file of the version except the manifest itself:
                     exactly adapter_config.json and adapter_model.safetensors
    training_data_hash, metrics   as given to push, or null
    libraries        {distribution: version} of the libraries that pushed it

Readers ignore unknown fields of their schema and refuse a newer ``schema_version`` with :class:`ManifestSchemaError`.
Numbers must be finite (strict JSON, :mod:`peft_ext.strict_json`); what the writer writes, the reader reads back equal
(:meth:`Manifest.to_json` checks it before anything is stored).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from peft_ext import strict_json
from peft_ext.base_ref import BaseModelRef

from .errors import (
    IntegrityError,
    InvalidBaseModelError,
    InvalidMetadataError,
    ManifestError,
    ManifestSchemaError,
    MissingFileError,
    UnexpectedFileError,
)
from .fingerprints import sha256_bytes, sha256_file
from .names import ADAPTER_FILES, check_task
from .versions import SemVer

MANIFEST_FILE = "peft_ext_manifest.json"
SCHEMA_VERSION = 1
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LIBRARIES = ("peft-ext", "peft", "transformers", "torch", "huggingface_hub", "safetensors")


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """What one pushed version is: its files' hashes and the base model it belongs to."""

    task: str
    version: SemVer
    files: dict[str, FileEntry]
    adapter: dict[str, Any] = field(default_factory=dict)
    base_model: BaseModelRef | None = None
    parent_version: SemVer | None = None
    created_at: str = ""
    training_data_hash: str | None = None
    metrics: dict[str, Any] | None = None
    libraries: dict[str, str | None] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def build(cls, *, task: str, version: SemVer, files: dict[str, bytes], **fields: Any) -> Manifest:
        """A manifest for ``files`` (name -> bytes), stamped with the current time and library versions."""
        entries = {name: FileEntry(sha256_bytes(data), len(data)) for name, data in files.items()}
        created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return cls(
            task=task, version=version, files=entries, created_at=created, libraries=library_versions(), **fields
        )

    def same_files(self, other: Manifest) -> bool:
        return self.files == other.files

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "task": self.task,
            "version": str(self.version),
            "parent_version": None if self.parent_version is None else str(self.parent_version),
            "created_at": self.created_at,
            "base_model": None if self.base_model is None else self.base_model.to_dict(),
            "adapter": self.adapter,
            "files": {name: {"sha256": e.sha256, "size": e.size} for name, e in sorted(self.files.items())},
            "training_data_hash": self.training_data_hash,
            "metrics": self.metrics,
            "libraries": self.libraries,
        }

    def to_json(self) -> bytes:
        """The manifest's bytes, refused with :class:`InvalidMetadataError` unless the reader takes them back equal."""
        raw = self.to_dict()
        for key in ("metrics", "training_data_hash", "adapter"):
            if found := strict_json.problem(raw[key], key):
                raise InvalidMetadataError(f"Cannot store the manifest of {self.task} {self.version}: {found}.")
        data = (json.dumps(raw, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
        try:
            again = Manifest.from_json(data, MANIFEST_FILE)
        except ManifestError as exc:
            raise InvalidMetadataError(f"Cannot store the manifest of {self.task} {self.version}: {exc}") from None
        if again != self:
            raise InvalidMetadataError(
                f"Cannot store the manifest of {self.task} {self.version}: it does not read back equal (metrics "
                "must hold only JSON values: dict with str keys, list, str, int, float, bool, None)."
            )
        return data

    @classmethod
    def from_json(cls, data: bytes | str, source: str = MANIFEST_FILE) -> Manifest:
        """Parse and type-check a manifest; raise :class:`ManifestError` / :class:`ManifestSchemaError`."""
        try:
            raw = strict_json.loads_object(data)
        except strict_json.StrictJSONError as exc:
            raise ManifestError(f"{source} is not a valid JSON object ({exc}).") from None
        schema = raw.get("schema_version")
        if type(schema) is not int or schema < 1:
            raise ManifestError(f"{source} has no valid schema_version (got {schema!r}).")
        if schema > SCHEMA_VERSION:
            raise ManifestSchemaError(
                f"{source} uses manifest schema {schema}, newer than the {SCHEMA_VERSION} this peft-ext reads; "
                "upgrade peft-ext to pull it."
            )
        return cls._from_dict(raw, source)

    @classmethod
    def _from_dict(cls, raw: dict[str, Any], source: str) -> Manifest:
        def bad(what: str) -> ManifestError:
            return ManifestError(f"{source}: {what}.")

        try:
            task = check_task(raw.get("task"))
            version = SemVer.parse(raw.get("version"))
            parent = raw.get("parent_version")
            parent_version = None if parent is None else SemVer.parse(parent)
        except ValueError as exc:
            raise bad(str(exc)) from None
        files_raw = raw.get("files")
        if not isinstance(files_raw, dict) or not files_raw:
            raise bad("'files' must be a non-empty object")
        files = {}
        for name, entry in files_raw.items():
            if not _FILE_NAME.fullmatch(name) or ".." in name or name == MANIFEST_FILE:
                raise bad(f"unsafe file name {name!r}")
            if not isinstance(entry, dict):
                raise bad(f"entry for {name!r} must be an object")
            digest, size = entry.get("sha256"), entry.get("size")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest) or type(size) is not int or size < 0:
                raise bad(f"entry for {name!r} needs a sha256 hex digest and a size")
            files[name] = FileEntry(digest, size)
        if set(files) != set(ADAPTER_FILES):
            raise bad(
                f"'files' must list exactly {', '.join(ADAPTER_FILES)} (got {', '.join(sorted(files))}); "
                "the version is incomplete or was tampered with"
            )
        optional = {"created_at": str, "training_data_hash": str, "metrics": dict, "adapter": dict, "libraries": dict}
        for key, kind in optional.items():
            if raw.get(key) is not None and not isinstance(raw[key], kind):
                raise bad(f"'{key}' must be {kind.__name__} or null")
        base = raw.get("base_model")
        try:
            base_model = None if base is None else BaseModelRef.from_dict(base)
        except InvalidBaseModelError as exc:
            raise ManifestError(f"{source}: {exc}") from None
        return cls(
            task=task,
            version=version,
            files=files,
            adapter=raw.get("adapter") or {},
            base_model=base_model,
            parent_version=parent_version,
            created_at=raw.get("created_at") or "",
            training_data_hash=raw.get("training_data_hash"),
            metrics=raw.get("metrics"),
            libraries=raw.get("libraries") or {},
            schema_version=raw["schema_version"],
        )


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{path} is missing: not a hub version folder.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path} could not be read ({exc.strerror or type(exc).__name__}).") from None
    return Manifest.from_json(data, str(path))


def check_metadata(metrics: Any, training_data_hash: Any) -> None:
    """Refuse push metadata the manifest cannot hold, with :class:`InvalidMetadataError`, before anything is read."""
    if training_data_hash is not None and not isinstance(training_data_hash, str):
        raise InvalidMetadataError(
            f"training_data_hash must be a string or None, got {type(training_data_hash).__name__} "
            f"{training_data_hash!r:.60}."
        )
    if metrics is not None and not isinstance(metrics, dict):
        raise InvalidMetadataError(f"metrics must be a dict (JSON object) or None, got {type(metrics).__name__}.")
    if found := strict_json.problem(metrics, "metrics"):
        raise InvalidMetadataError(f"Cannot store {found}.")


def verify_folder(folder: str | Path, manifest: Manifest) -> None:
    """Check that ``folder`` holds exactly the manifest and the files it lists, each with its size and sha256.

    Raises :class:`UnexpectedFileError` for anything else in the folder (a pickle dropped beside the weights),
    :class:`MissingFileError` for a listed file that is absent, :class:`IntegrityError` for one whose bytes differ.
    Paths in messages are the real files (the Hugging Face cache links to blobs).
    """
    folder = Path(folder)
    try:
        present = {p.name for p in folder.iterdir()}
    except OSError as exc:
        raise MissingFileError(f"{folder} could not be listed ({exc.strerror or type(exc).__name__}).") from None
    extra = sorted(present - set(manifest.files) - {MANIFEST_FILE})
    if extra:
        raise UnexpectedFileError(
            f"{folder} holds {', '.join(extra)}, which its manifest does not list: the version was tampered with."
        )
    for name, entry in sorted(manifest.files.items()):
        path = folder / name
        if not path.is_file():
            raise MissingFileError(f"{path} is listed in the manifest but missing.")
        real = path.resolve()
        size, digest = real.stat().st_size, sha256_file(real)
        if size != entry.size or digest != entry.sha256:
            raise IntegrityError(
                f"{real} does not match its manifest entry {name!r} (size {size} vs {entry.size}, sha256 "
                f"{digest[:12]}... vs {entry.sha256[:12]}...)."
            )


def library_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
