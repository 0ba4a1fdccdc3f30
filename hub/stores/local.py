"""``LocalStore``: versions as folders ``<root>/<repo>/<task>/<version>/``.

Writes happen under a per-repo file lock (``<repo>/.lock``, the ``filelock`` package), so concurrent pushes from
several processes are serialised and each gets its own version. A version is written into ``<repo>/.staging/``
and renamed into place in one step: a push killed at any point leaves either the whole version or nothing visible
(stale staging folders are removed by the next writer). Yanks are marker files ``<task>/.yanked/<version>.json``;
the version's own bytes never change. The repo's ``README.md`` is the same model card the Hub store writes; it is
rewritten after every push (also one that finds its version already there, which repairs the card of a push killed
between the rename and the card) and by :meth:`LocalStore.refresh_card`. File-system failures (a root that is a file,
no permission, a full disk) become :class:`StoreAccessError`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar, cast

from filelock import FileLock, Timeout

from peft_ext.local_files import atomic_write, cache_root, write_synced

from ..card import render_card
from ..errors import (
    ConcurrentUpdateError,
    InvalidArgumentError,
    InvalidVersionError,
    ManifestError,
    NotFoundError,
    PeftExtError,
    StoreAccessError,
)
from ..manifest import MANIFEST_FILE, read_manifest
from ..names import check_repo, check_task
from ..versions import SemVer, next_version
from .base import MakeManifest, PublishResult, Store, VersionEntry, card_row, check_same_files, hub_base_ids, parent_of

LOCK_TIMEOUT_S = 600.0
F = TypeVar("F", bound=Callable[..., Any])


def _os_errors(method: F) -> F:
    """Turn a file-system failure inside a store method into :class:`StoreAccessError` naming the root."""

    @wraps(method)
    def wrapper(self: LocalStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except PeftExtError:  # already named (a hub or an adapter error)
            raise
        except OSError as exc:
            where = exc.filename or self.root
            raise StoreAccessError(
                f"The local store at {str(self.root)!r} cannot be used: {exc.strerror or type(exc).__name__} "
                f"({where}). Pass a writable folder (--root / PEFT_EXT_HUB_ROOT)."
            ) from None

    return cast(F, wrapper)


def default_root() -> Path:
    """``$PEFT_EXT_HUB_ROOT``, else ``hub`` in peft_ext's cache (``$PEFT_EXT_CACHE``, ``$XDG_CACHE_HOME/peft_ext``,
    ``~/.cache/peft_ext``)."""
    if os.environ.get("PEFT_EXT_HUB_ROOT"):
        return Path(os.environ["PEFT_EXT_HUB_ROOT"]).expanduser()
    return cache_root() / "hub"


class LocalStore(Store):
    """A store in a local directory (the default store)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is not None and (not isinstance(root, (str, os.PathLike)) or isinstance(root, bytes) or root == ""):
            raise InvalidArgumentError(
                f"LocalStore root must be a folder path, got {type(root).__name__} {root!r:.60}."
            )
        self.root = Path(root).expanduser() if root is not None else default_root()
        if self.root.exists() and not self.root.is_dir():
            raise StoreAccessError(f"The local store root {str(self.root)!r} is a file, not a folder; pass a folder.")

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    @_os_errors
    def tasks(self, repo: str) -> list[str]:
        folder = self._repo_dir(repo)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and _is_task(p.name))

    @_os_errors
    def versions(self, repo: str, task: str) -> list[VersionEntry]:
        folder = self._repo_dir(repo) / check_task(task)
        if not folder.is_dir():
            return []
        entries = []
        for child in folder.iterdir():
            version = _as_version(child.name)
            if version is None or not child.is_dir():
                continue
            marker = folder / ".yanked" / f"{version}.json"
            reason = _read_reason(marker) if marker.is_file() else None
            entries.append(VersionEntry(version, marker.is_file(), reason))
        return sorted(entries, key=lambda e: e.version)

    @_os_errors
    def publish(
        self,
        repo: str,
        task: str,
        files: dict[str, bytes],
        make_manifest: MakeManifest,
        version: SemVer | None,
        bump: str,
    ) -> PublishResult:
        repo_dir = self._repo_dir(repo)
        check_task(task)
        with self._locked(repo_dir):
            _remove_stale_staging(repo_dir)
            existing = [e.version for e in self.versions(repo, task)]
            chosen = next_version(existing, version, bump)
            final = repo_dir / task / str(chosen)
            manifest = make_manifest(chosen, parent_of(existing, chosen))
            if final.exists():
                check_same_files(repo, task, read_manifest(final), manifest)
                self._write_card(repo)  # a push killed after its rename left the card behind: this repairs it
                return PublishResult(repo, task, chosen, False, str(final))
            manifest_bytes = manifest.to_json()  # validated before anything is staged
            stage = repo_dir / ".staging" / uuid.uuid4().hex
            stage.mkdir(parents=True)
            for name, data in {**files, MANIFEST_FILE: manifest_bytes}.items():
                write_synced(stage / name, data)
            final.parent.mkdir(exist_ok=True)
            os.rename(stage, final)  # the commit point: the version appears whole or not at all
            self._write_card(repo)
        return PublishResult(repo, task, chosen, True, str(final))

    @_os_errors
    def fetch(self, repo: str, task: str, version: SemVer) -> Path:
        folder = self._repo_dir(repo) / check_task(task) / str(version)
        if not folder.is_dir():
            raise NotFoundError(f"{repo}: {task} {version} does not exist in {self.root}.")
        return folder

    @_os_errors
    def set_yanked(self, repo: str, task: str, version: SemVer, yanked: bool, reason: str | None = None) -> None:
        repo_dir = self._repo_dir(repo)
        folder = self.fetch(repo, task, version).parent
        with self._locked(repo_dir):
            marker = folder / ".yanked" / f"{version}.json"
            if yanked:
                marker.parent.mkdir(exist_ok=True)
                stamp = datetime.now(UTC).isoformat(timespec="seconds")
                atomic_write(marker, json.dumps({"reason": reason, "yanked_at": stamp}).encode())
            else:
                marker.unlink(missing_ok=True)
            self._write_card(repo)

    @_os_errors
    def refresh_card(self, repo: str) -> None:
        repo_dir = self._repo_dir(repo)
        if not repo_dir.is_dir():
            raise NotFoundError(f"{repo} does not exist in {self.root}; nothing to repair.")
        with self._locked(repo_dir):
            self._write_card(repo)

    def _repo_dir(self, repo: str) -> Path:
        return self.root / check_repo(repo)

    @contextmanager
    def _locked(self, repo_dir: Path) -> Iterator[None]:
        repo_dir.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(repo_dir / ".lock"), timeout=LOCK_TIMEOUT_S):
                yield
        except Timeout:
            raise ConcurrentUpdateError(
                f"Timed out after {LOCK_TIMEOUT_S:.0f}s waiting for the lock on {repo_dir}; another push is running."
            ) from None

    def _write_card(self, repo: str) -> None:
        rows, manifests = [], []
        for task in self.tasks(repo):
            for entry in self.versions(repo, task):
                try:
                    manifest = read_manifest(self._repo_dir(repo) / task / str(entry.version))
                except ManifestError:
                    continue
                manifests.append(manifest)
                rows.append(card_row(manifest, entry.yanked))
        text = render_card(repo, rows, hub_base_ids(manifests))
        atomic_write(self._repo_dir(repo) / "README.md", text.encode())


def _is_task(name: str) -> bool:
    try:
        check_task(name)
    except ValueError:
        return False
    return True


def _as_version(name: str) -> SemVer | None:
    try:
        return SemVer.parse(name)
    except InvalidVersionError:
        return None


def _read_reason(marker: Path) -> str | None:
    try:
        reason = json.loads(marker.read_text()).get("reason")
    except (ValueError, OSError, AttributeError):
        return None
    return reason if isinstance(reason, str) else None


def _remove_stale_staging(repo_dir: Path) -> None:
    # Called under the repo lock: any staging folder left is from a writer that died mid-push.
    staging = repo_dir / ".staging"
    if staging.is_dir():
        for child in staging.iterdir():
            shutil.rmtree(child, ignore_errors=True)
    for tmp in repo_dir.glob(".README.md.*.tmp"):
        tmp.unlink(missing_ok=True)
