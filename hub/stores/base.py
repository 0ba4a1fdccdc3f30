"""The interface both stores implement, and the results they return."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..card import CardRow
from ..errors import InvalidNameError, VersionExistsError
from ..manifest import Manifest
from ..names import check_repo
from ..versions import SemVer

DEFAULT_TIMEOUT_S = 30.0  # seconds a remote store's request may go without progress

MakeManifest = Callable[[SemVer, "SemVer | None"], Manifest]


@dataclass(frozen=True)
class VersionEntry:
    """One version of a task as the store lists it."""

    version: SemVer
    yanked: bool = False
    yank_reason: str | None = None


@dataclass(frozen=True)
class PublishResult:
    """What a push did: ``created`` is False when the same bytes were already stored under that version."""

    repo: str
    task: str
    version: SemVer
    created: bool
    location: str


class Store(ABC):
    """Where versions live. Implementations make ``publish`` atomic and refuse to change an existing version."""

    @abstractmethod
    def tasks(self, repo: str) -> list[str]:
        """Task names of ``repo``, sorted; empty if the repo does not exist."""

    @abstractmethod
    def versions(self, repo: str, task: str) -> list[VersionEntry]:
        """Versions of ``task``, ascending; empty if none."""

    @abstractmethod
    def publish(
        self,
        repo: str,
        task: str,
        files: dict[str, bytes],
        make_manifest: MakeManifest,
        version: SemVer | None,
        bump: str,
    ) -> PublishResult:
        """Store ``files`` plus their manifest as a new version, chosen atomically with respect to other writers."""

    @abstractmethod
    def fetch(self, repo: str, task: str, version: SemVer) -> Path:
        """A local folder holding the version's files and manifest (not yet verified)."""

    @abstractmethod
    def set_yanked(self, repo: str, task: str, version: SemVer, yanked: bool, reason: str | None = None) -> None:
        """Retire (or restore) a version without touching its bytes."""

    @abstractmethod
    def refresh_card(self, repo: str) -> None:
        """Rebuild the repo's model card from the versions it holds (repairs a card an interrupted write left stale)."""

    def evict(self, repo: str, task: str, version: SemVer) -> bool:
        """Drop a local *copy* of a version that failed verification, so that ``fetch`` downloads it again.

        Returns False when there is no copy to drop (the store itself holds the bytes, as ``LocalStore`` does).
        """
        return False


def parent_of(existing: list[SemVer], version: SemVer) -> SemVer | None:
    """The version a new one descends from: the highest existing version below it."""
    return max((v for v in existing if v < version), default=None)


def check_same_files(repo: str, task: str, stored: Manifest, new: Manifest) -> None:
    """Immutability: the same bytes again is fine, anything else is refused."""
    if not stored.same_files(new):
        raise VersionExistsError(
            f"{repo}: {task} {stored.version} already exists with different files; versions are immutable. "
            "Push a new version (omit --version to bump)."
        )


def card_row(manifest: Manifest, yanked: bool) -> CardRow:
    base = manifest.base_model.label if manifest.base_model is not None else "unknown"
    kind = str(manifest.adapter.get("kind") or "input")  # manifests pushed before deep prompts are input-level
    return CardRow(manifest.task, str(manifest.version), yanked, base, manifest.created_at, kind)


def hub_base_ids(manifests: list[Manifest]) -> list[str]:
    """Base-model ids that look like Hub repo ids (``namespace/name``), for the card's ``base_model``."""
    ids = [m.base_model.model_id for m in manifests if m.base_model is not None and m.base_model.model_id]
    return [i for i in ids if i.count("/") == 1 and _is_repo_id(i)]


def _is_repo_id(text: str) -> bool:
    try:
        check_repo(text)
    except InvalidNameError:
        return False
    return True
