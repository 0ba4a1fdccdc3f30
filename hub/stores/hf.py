"""``HfStore``: versions in one Hugging Face Hub model repo, one git tag per version.

Layout of the repo (branch ``main``)::

    README.md                        model card (library_name: peft, base_model, table of tasks and versions)
    peft_ext_index.json              one row per version, the card's source
    <task>/<version>/adapter_config.json, adapter_model.safetensors, peft_ext_manifest.json

A version is ONE ``create_commit`` (its three files, the index and the card, with ``parent_commit`` so a concurrent
writer is detected: HTTP 412 makes us re-read the repo and re-plan), then the tag ``<task>/v<version>`` on that
commit. The tag is what makes a version exist: a commit whose tag failed stays invisible until a push of the same
bytes repairs it, and a tag is only ever created on a commit already known to hold the version. Every version keeps
its own folder, so the tagged commit and ``main`` agree on its bytes, and ``PeftModel.from_pretrained(repo,
subfolder="<task>/<version>")`` works with stock PEFT too. A yank is the extra tag ``<task>/yanked/v<version>``
(its message holds the reason); no bytes change.

Pulls go through ``snapshot_download`` at the tag's commit with ``allow_patterns="<task>/<version>/*"``, so the
Hugging Face cache, ``HF_HUB_CACHE`` and offline mode behave as usual; a version already in the cache is served
with no request at all (``HfApi.resolve_revision`` keeps the tag -> commit mapping in the cache's ``refs/``). The cache
is read and pruned only through huggingface_hub's ``scan_cache_dir``: the cached tags are the refs of its revisions,
and a cached copy that fails verification is dropped (:meth:`HfStore.evict`: ``HFCacheInfo.delete_revisions`` of the
tag's commit and of any other cached commit linking one of its damaged blobs) and downloaded again.

Every remote operation (push, tag, yank, card, listing, resolving, downloading) runs through one retry loop,
:meth:`HfStore._call`: transient failures (429, 5xx, timeouts, dropped connections, truncated bodies) are retried
``attempts`` times with exponential waits, a push re-reading the repo each time; whatever still fails becomes a named
error (:mod:`.hf_errors`) with the token and URL credentials scrubbed. huggingface_hub's own retries do not cover it:
``HfApi.create_commit``, ``create_tag``, ``list_repo_refs`` and ``repo_info`` send one request through
``get_session()`` and never retry (the public ``http_backoff`` retries one raw request to a URL, not an ``HfApi`` call,
and knows no 412 that needs the push re-planned); ``hf_hub_download`` retries its metadata HEAD only when nothing is
cached, and a file's GET only on 408/429 or a dropped connection, never on a 5xx or corrupt bytes.

Every request carries the store's timeout (:mod:`.hf_client`). Listing versions needs the server: when it cannot be
reached the listing fails (a pull by constraint must not quietly pick an older cached version), unless offline mode
(``HF_HUB_OFFLINE=1``) is on, where the versions already pulled are listed from the cache, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from huggingface_hub import (
    CachedRepoInfo,
    CommitOperationAdd,
    HfApi,
    HFCacheInfo,
    get_token,
    hf_hub_download,
    scan_cache_dir,
    snapshot_download,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    CacheNotFound,
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionResolutionError,
)
from huggingface_hub.utils.sha import git_hash

from ..card import CardRow, render_card
from ..errors import (
    ConcurrentUpdateError,
    HubError,
    IntegrityError,
    InvalidArgumentError,
    InvalidEndpointError,
    NotFoundError,
    PeftExtError,
    RemoteError,
)
from ..manifest import MANIFEST_FILE, Manifest
from ..names import check_repo, check_task
from ..versions import SemVer, next_version
from . import hf_client
from .base import (
    DEFAULT_TIMEOUT_S,
    MakeManifest,
    PublishResult,
    Store,
    VersionEntry,
    card_row,
    check_same_files,
    hub_base_ids,
    parent_of,
)
from .hf_errors import REMOTE_ERRORS, is_transient, scrub, status_of, translate

INDEX_FILE = "peft_ext_index.json"
MAX_RETRY_WAIT_S = 30.0
_VERSION_TAG = re.compile(r"([a-z0-9][a-z0-9_-]*)/v([0-9]+\.[0-9]+\.[0-9]+)")
_YANK_TAG = re.compile(r"([a-z0-9][a-z0-9_-]*)/yanked/v([0-9]+\.[0-9]+\.[0-9]+)")
_VERSION_FILE = re.compile(r"([a-z0-9][a-z0-9_-]*)/([0-9]+\.[0-9]+\.[0-9]+)/" + re.escape(MANIFEST_FILE))
T = TypeVar("T")


def check_endpoint(endpoint: object) -> str:
    """``endpoint`` without a trailing slash if it is ``http(s)://host[:port][/path]`` with no credentials."""
    text = endpoint if isinstance(endpoint, str) else ""
    parts = urlsplit(text.strip())
    try:
        parts.port  # noqa: B018  (raises ValueError for a port out of range)
        valid_port = True
    except ValueError:
        valid_port = False
    shown = scrub(repr(endpoint)[:120])
    if parts.scheme not in ("http", "https") or not parts.hostname or not valid_port or parts.query or parts.fragment:
        raise InvalidEndpointError(f"Invalid Hub endpoint {shown}: expected a URL like 'https://huggingface.co'.")
    if parts.username is not None or parts.password is not None:
        raise InvalidEndpointError(
            f"The Hub endpoint {shown} carries credentials in the URL, where they would be logged and shown in "
            "errors; remove them and pass the token with HF_TOKEN (or HfStore(token=...))."
        )
    return text.strip().rstrip("/")


class HfStore(Store):
    """A store in Hugging Face Hub repos reached through ``HfApi(endpoint=..., token=...)``.

    ``endpoint`` defaults to huggingface_hub's (``HF_ENDPOINT`` as read at import), ``token`` to huggingface_hub's
    (``HF_TOKEN`` or the saved login); ``cache_dir`` to the Hugging Face cache. ``private`` applies when a push
    creates the repo. Transient failures (429, 5xx, timeouts, dropped connections) are retried ``attempts`` times,
    waiting ``retry_wait_s`` then doubling; every HTTP request times out after ``timeout_s`` seconds without progress.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        token: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        private: bool | None = None,
        attempts: int = 4,
        retry_wait_s: float = 1.0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.endpoint = check_endpoint(endpoint if endpoint is not None else hf_constants.ENDPOINT)
        if type(attempts) is not int or attempts < 1:
            raise InvalidArgumentError(f"attempts must be a positive integer, got {attempts!r:.40}.")
        for name, value in (("retry_wait_s", retry_wait_s), ("timeout_s", timeout_s)):
            if (
                type(value) not in (int, float)
                or not math.isfinite(value)
                or value < 0
                or (name == "timeout_s" and not value)
            ):
                raise InvalidArgumentError(f"{name} must be a finite number of seconds > 0, got {value!r:.40}.")
        if token is not None and not isinstance(token, str):
            raise InvalidArgumentError(f"token must be a string or None, got {type(token).__name__}.")
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self.private = private
        self.attempts = attempts
        self.retry_wait_s = float(retry_wait_s)
        self.timeout_s = float(timeout_s)
        # The token actually sent is known here, whether given or read by huggingface_hub, so it can be scrubbed.
        self._token = token if token is not None else get_token()
        self._api = HfApi(endpoint=self.endpoint, token=self._token, library_name="peft-ext")
        hf_client.register(self.endpoint, self.timeout_s)

    def __repr__(self) -> str:  # never the token
        return f"HfStore(endpoint={self.endpoint!r})"

    # -- the one retry loop ---------------------------------------------------------------------------------------

    def _call(self, what: str, operation: Callable[[], T], *, conflicts: bool = False) -> T:
        """Run ``operation``, retrying transient failures (and, with ``conflicts``, a stale parent: HTTP 412)."""
        last: BaseException | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(min(self.retry_wait_s * 2 ** (attempt - 1), MAX_RETRY_WAIT_S))
            # Each attempt: huggingface_hub may have rebuilt its client (after a connection error) without the hook.
            hf_client.ensure_installed()
            try:
                return operation()
            except PeftExtError:  # already named (a hub or an adapter error)
                raise
            except REMOTE_ERRORS as exc:
                if not ((conflicts and status_of(exc) == 412) or is_transient(exc)):
                    raise translate(exc, what, self.endpoint, self._token) from None
                last = exc
        assert last is not None
        if conflicts and status_of(last) == 412:
            raise ConcurrentUpdateError(f"{what}: the repo kept changing during {self.attempts} attempts; retry.")
        raise translate(last, f"{what} (gave up after {self.attempts} attempts)", self.endpoint, self._token)

    # -- reading ------------------------------------------------------------------------------------------------

    def tasks(self, repo: str) -> list[str]:
        names = {m.group(1) for tag in self._tags(repo) if (m := _VERSION_TAG.fullmatch(tag))}
        return sorted(names)

    def versions(self, repo: str, task: str) -> list[VersionEntry]:
        check_task(task)
        tags = self._tags(repo)
        yanked = {SemVer.parse(m.group(2)) for t in tags if (m := _YANK_TAG.fullmatch(t)) and m.group(1) == task}
        found = {SemVer.parse(m.group(2)) for t in tags if (m := _VERSION_TAG.fullmatch(t)) and m.group(1) == task}
        return [VersionEntry(v, v in yanked) for v in sorted(found)]

    def fetch(self, repo: str, task: str, version: SemVer) -> Path:
        check_repo(repo)
        tag = f"{check_task(task)}/v{version}"
        commit = self._resolve_tag(repo, tag)

        def download() -> str:
            return snapshot_download(
                repo,
                revision=commit,
                allow_patterns=[f"{task}/{version}/*"],
                endpoint=self.endpoint,
                token=self._token,
                cache_dir=self.cache_dir,
                library_name="peft-ext",
                etag_timeout=self.timeout_s,
                max_workers=1,
            )

        root = self._call(f"Downloading {repo} {task} {version}", download)
        folder = Path(root) / task / str(version)
        if not (folder / MANIFEST_FILE).is_file():
            raise NotFoundError(f"{repo}: tag {tag} points to commit {commit[:12]} which has no {task}/{version}/.")
        return folder

    def evict(self, repo: str, task: str, version: SemVer) -> bool:
        """Drop the cached copy of a version: the cached revision of its tag's commit, through huggingface_hub.

        ``delete_revisions`` keeps a blob that another cached revision still links; such a blob whose bytes no
        longer match its name (the content hash it is filed under) is damaged for every revision, so those go too.
        True when the copy is gone; False when there was none, or huggingface_hub could not delete it.
        """
        found = self._cached_repo(repo)
        if found is None:
            return False
        info, cached = found
        tag = f"{task}/v{version}"
        revision = next((r for r in cached.revisions if tag in r.refs), None)
        if revision is None:
            return False
        folder = revision.snapshot_path / task / str(version)
        files = [f for f in revision.files if folder in f.file_path.parents]
        if not files:
            return False
        others = cached.revisions - {revision}
        shared = {g.blob_path for r in others for g in r.files}
        try:
            damaged = {
                f.blob_path
                for f in files
                if f.blob_path in shared
                and revision.snapshot_path not in f.blob_path.parents
                and not _matches_its_name(f.blob_path)
            }
            linking = {r.commit_hash for r in others if any(g.blob_path in damaged for g in r.files)}
            info.delete_revisions(revision.commit_hash, *sorted(linking)).execute()
        except OSError:
            return False
        return not revision.snapshot_path.exists() and not any(b.exists() for b in damaged)

    # -- writing ------------------------------------------------------------------------------------------------

    def publish(
        self,
        repo: str,
        task: str,
        files: dict[str, bytes],
        make_manifest: MakeManifest,
        version: SemVer | None,
        bump: str,
    ) -> PublishResult:
        check_repo(repo)
        check_task(task)
        tagging: list[tuple[str, str, PublishResult]] = []  # (tag, commit, result) of a tag request sent

        def once() -> PublishResult:
            if tagging:  # a tag request was sent before the failure: if it took effect, the push is done
                tag, commit, result = tagging[-1]
                if {t.name: t.target_commit for t in self._api.list_repo_refs(repo).tags}.get(tag) == commit:
                    return result
            return self._publish_once(repo, task, files, make_manifest, version, bump, tagging)

        return self._call(f"Pushing {repo} {task}", once, conflicts=True)

    def _publish_once(
        self,
        repo: str,
        task: str,
        files: dict[str, bytes],
        make_manifest: MakeManifest,
        version: SemVer | None,
        bump: str,
        tagging: list[tuple[str, str, PublishResult]],
    ) -> PublishResult:
        try:
            info = self._api.repo_info(repo, revision="main")
        except RepositoryNotFoundError:
            self._api.create_repo(repo, exist_ok=True, private=self.private)
            info = self._api.repo_info(repo, revision="main")
        head = str(info.sha)
        at_head = {
            (m.group(1), SemVer.parse(m.group(2)))
            for s in getattr(info, "siblings", None) or []
            if (m := _VERSION_FILE.fullmatch(s.rfilename))
        }
        refs = self._api.list_repo_refs(repo)
        tag_targets = {t.name: t.target_commit for t in refs.tags}
        tagged = {
            SemVer.parse(m.group(2)) for t in tag_targets if (m := _VERSION_TAG.fullmatch(t)) and m.group(1) == task
        }
        existing = sorted(tagged | {v for t, v in at_head if t == task})
        chosen = next_version(existing, version, bump)
        manifest = make_manifest(chosen, parent_of(existing, chosen))
        if version is None:  # adopt an untagged commit of these very bytes (an earlier push that failed to tag)
            for orphan in sorted(v for t, v in at_head if t == task and v not in tagged):
                if self._manifest_at(repo, task, orphan, head).same_files(manifest):
                    chosen, manifest = orphan, make_manifest(orphan, parent_of(existing, orphan))
                    break
        tag = f"{task}/v{chosen}"
        location = f"{self.endpoint}/{repo}/tree/{tag}/{task}/{chosen}"
        if (task, chosen) in at_head:  # already committed: same bytes -> make sure it is tagged, else refuse
            check_same_files(repo, task, self._manifest_at(repo, task, chosen, head), manifest)
            if tag in tag_targets:
                return PublishResult(repo, task, chosen, False, location)
            tagging.append((tag, head, PublishResult(repo, task, chosen, True, location)))
            self._tag(repo, tag, head, task, chosen, manifest)
            return tagging[-1][2]
        if tag in tag_targets:  # tagged but gone from main (rewritten history): compare with the tagged bytes
            check_same_files(repo, task, self._manifest_at(repo, task, chosen, tag_targets[tag]), manifest)
            return PublishResult(repo, task, chosen, False, location)
        manifest_bytes = manifest.to_json()  # validated before anything is sent
        index = self._index(repo, head)
        index.append(_index_row(manifest))
        yanked = {(m.group(1), m.group(2)) for t in tag_targets if (m := _YANK_TAG.fullmatch(t))}
        prefix = f"{task}/{chosen}/"
        operations = [CommitOperationAdd(prefix + name, data) for name, data in files.items()]
        operations += [
            CommitOperationAdd(prefix + MANIFEST_FILE, manifest_bytes),
            CommitOperationAdd(INDEX_FILE, _index_json(index)),
            CommitOperationAdd("README.md", self._card(repo, index, yanked).encode()),
        ]
        commit = self._api.create_commit(
            repo, operations, commit_message=f"peft-ext hub: {task} v{chosen}", parent_commit=head
        )
        tagging.append((tag, str(commit.oid), PublishResult(repo, task, chosen, True, location)))
        self._tag(repo, tag, str(commit.oid), task, chosen, manifest)
        return tagging[-1][2]

    def _tag(self, repo: str, tag: str, commit: str, task: str, version: SemVer, manifest: Manifest) -> None:
        """Tag ``commit`` (known to hold the version); a 409 is fine if the existing tag holds the same bytes.

        Transient failures propagate to the caller's retry loop, which re-reads the repo and finds the version
        committed but untagged (or already tagged, if only the answer was lost).
        """
        try:
            self._api.create_tag(repo, tag=tag, revision=commit, tag_message=f"{task} {version}")
        except HfHubHTTPError as exc:
            if status_of(exc) != 409:
                raise
            target = {t.name: t.target_commit for t in self._api.list_repo_refs(repo).tags}.get(tag)
            if target is None:
                raise
            if target != commit:
                check_same_files(repo, task, self._manifest_at(repo, task, version, target), manifest)

    def set_yanked(self, repo: str, task: str, version: SemVer, yanked: bool, reason: str | None = None) -> None:
        check_repo(repo)
        tag = f"{check_task(task)}/yanked/v{version}"
        if yanked:
            target = self._resolve_tag(repo, f"{task}/v{version}", use_cache=False)
            self._call(
                f"Yanking {repo} {task} {version}",
                lambda: self._api.create_tag(
                    repo, tag=tag, revision=target, tag_message=reason or "yanked", exist_ok=True
                ),
            )
        elif tag in self._tags(repo):
            self._call(f"Restoring {repo} {task} {version}", lambda: self._delete_tag(repo, tag))
        try:
            self.refresh_card(repo)
        except HubError as exc:  # the yank itself is done; only the card lags behind
            warnings.warn(
                f"The yank is recorded but the card was not updated: {exc} Run `peft-ext hub repair-card {repo}`.",
                stacklevel=2,
            )

    def _delete_tag(self, repo: str, tag: str) -> None:
        try:
            self._api.delete_tag(repo, tag=tag)
        except HfHubHTTPError as exc:  # gone already (an earlier attempt whose answer was lost)
            if status_of(exc) != 404:
                raise

    def refresh_card(self, repo: str) -> None:
        check_repo(repo)
        self._call(f"Updating the card of {repo}", lambda: self._refresh_card_once(repo), conflicts=True)

    def _refresh_card_once(self, repo: str) -> None:
        head = str(self._api.repo_info(repo, revision="main").sha)
        tags = [t.name for t in self._api.list_repo_refs(repo).tags]
        yanked = {(m.group(1), m.group(2)) for t in tags if (m := _YANK_TAG.fullmatch(t))}
        card = self._card(repo, self._index(repo, head), yanked).encode()
        self._api.create_commit(
            repo,
            [CommitOperationAdd("README.md", card)],
            commit_message="peft-ext hub: update card",
            parent_commit=head,
        )

    # -- helpers ------------------------------------------------------------------------------------------------

    def _tags(self, repo: str) -> list[str]:
        check_repo(repo)
        if hf_constants.is_offline_mode():  # explicitly offline: the versions already pulled are what there is
            cached = self._cached_tags(repo)
            if cached is None:
                raise RemoteError(
                    f"Listing versions of {repo}: offline mode is enabled (HF_HUB_OFFLINE) and {repo} was never "
                    "pulled here; unset HF_HUB_OFFLINE."
                )
            warnings.warn(f"Offline mode: versions of {repo} listed from the local cache.", stacklevel=3)
            return cached
        try:
            return self._call(
                f"Listing versions of {repo}", lambda: [t.name for t in self._api.list_repo_refs(repo).tags]
            )
        except NotFoundError:
            return []
        except RemoteError as exc:
            if self._cached_tags(repo) is None:
                raise
            raise type(exc)(
                f"{exc} Versions cannot be resolved without the server; an exact version pulled before still "
                "works, and HF_HUB_OFFLINE=1 lists the cached ones."
            ) from None

    def _cached_repo(self, repo: str) -> tuple[HFCacheInfo, CachedRepoInfo] | None:
        """The HF cache's scan and its entry for the model repo ``repo``; None when either is missing.

        ``scan_cache_dir`` leaves out (as a warning) a repo folder it finds inconsistent, e.g. a ref left by an
        interrupted download with no snapshot behind it; such a repo counts as not cached until a pull completes.
        """
        try:
            info = scan_cache_dir(self.cache_dir or hf_constants.HF_HUB_CACHE)
        except (CacheNotFound, OSError, ValueError):  # no cache yet, unreadable, or a file where the folder should be
            return None
        cached = next((r for r in info.repos if r.repo_id == repo and r.repo_type == "model"), None)
        return None if cached is None else (info, cached)

    def _cached_tags(self, repo: str) -> list[str] | None:
        """Tags whose commit the HF cache holds (from earlier pulls); None if the repo was never pulled."""
        found = self._cached_repo(repo)
        tags = sorted(ref for revision in found[1].revisions for ref in revision.refs) if found else []
        return tags or None  # a pull always leaves its tag's ref: none at all means never pulled

    def _resolve_tag(self, repo: str, tag: str, use_cache: bool = True) -> str:
        """The commit of a version tag; from the cache's refs when known (tags are immutable), else the server."""
        if use_cache:
            try:
                cached = self._api.resolve_revision(repo, revision=tag, cache_dir=self.cache_dir, local_files_only=True)
                return cached.resolved
            except RevisionResolutionError:
                pass
        try:
            return self._call(
                f"Resolving {repo} {tag}",
                lambda: self._api.resolve_revision(repo, revision=tag, cache_dir=self.cache_dir).resolved,
            )
        except NotFoundError:
            raise NotFoundError(f"{repo}: version tag {tag} does not exist at {self.endpoint}.") from None

    def _download(self, repo: str, filename: str, commit: str) -> bytes:
        """A file's bytes at ``commit``, checked against the blob name huggingface_hub files it under (its ETag: git
        blob sha1, or sha256 for LFS files); a cached blob that does not match is dropped and downloaded once more."""
        for _attempt in range(2):
            link = Path(
                hf_hub_download(
                    repo,
                    filename,
                    revision=commit,
                    endpoint=self.endpoint,
                    token=self._token,
                    cache_dir=self.cache_dir,
                    etag_timeout=self.timeout_s,
                )
            )
            data, blob = link.read_bytes(), link.resolve()
            if _is_named_after(blob.name, data) or blob == link:
                return data
            link.unlink()
            blob.unlink(missing_ok=True)
        raise IntegrityError(
            f"{repo}/{filename} at {commit[:12]} arrived twice with bytes that do not match its ETag; retry later."
        )

    def _manifest_at(self, repo: str, task: str, version: SemVer, commit: str) -> Manifest:
        name = f"{task}/{version}/{MANIFEST_FILE}"
        return Manifest.from_json(self._download(repo, name, commit), f"{repo}/{name}@{commit[:12]}")

    def _index(self, repo: str, commit: str) -> list[dict[str, Any]]:
        try:
            rows = json.loads(self._download(repo, INDEX_FILE, commit)).get("versions")
        except EntryNotFoundError as exc:
            if status_of(exc) != 404:  # only "no index yet"; a cache fallback error is a real failure
                raise
            return []
        except (ValueError, AttributeError):  # damaged index: the card starts over, versions are unaffected
            return []
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []

    def _card(self, repo: str, index: list[dict[str, Any]], yanked: set[tuple[str, str]]) -> str:
        rows = [
            CardRow(
                str(r.get("task")),
                str(r.get("version")),
                (str(r.get("task")), str(r.get("version"))) in yanked,
                str(r.get("base_label") or "unknown"),
                str(r.get("created_at") or ""),
                str(r.get("kind") or "input"),
            )
            for r in index
        ]
        return render_card(repo, rows, [str(r["base_model_id"]) for r in index if r.get("base_model_id")])


def _is_named_after(name: str, data: bytes) -> bool:
    """Whether ``name`` is the hash huggingface_hub files these bytes under (git blob sha1, or sha256 for LFS)."""
    return name in (git_hash(data), hashlib.sha256(data).hexdigest())


def _matches_its_name(blob: Path) -> bool:
    return _is_named_after(blob.name, blob.read_bytes())


def _index_row(manifest: Manifest) -> dict[str, Any]:
    row = card_row(manifest, False)
    ids = hub_base_ids([manifest])
    return {
        "task": row.task,
        "version": row.version,
        "base_label": row.base_model,
        "base_model_id": ids[0] if ids else None,
        "created_at": row.created_at,
        "kind": row.kind,
    }


def _index_json(index: list[dict[str, Any]]) -> bytes:
    return (json.dumps({"schema_version": 1, "versions": index}, indent=1, sort_keys=True) + "\n").encode()
