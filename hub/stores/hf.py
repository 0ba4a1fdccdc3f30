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
with no request at all (the tag -> commit mapping is cached in the cache's ``refs/``, as huggingface_hub does).
"""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionResolutionError
from huggingface_hub.file_download import repo_folder_name

from ..card import CardRow, render_card
from ..errors import ConcurrentUpdateError, HubError, NotFoundError, RemoteError
from ..manifest import MANIFEST_FILE, Manifest
from ..names import check_repo, check_task
from ..versions import SemVer, next_version
from .base import MakeManifest, PublishResult, Store, VersionEntry, card_row, check_same_files, hub_base_ids, parent_of
from .hf_errors import is_transient, status_of, translate, translated

INDEX_FILE = "peft_ext_index.json"
_VERSION_TAG = re.compile(r"([a-z0-9][a-z0-9_-]*)/v([0-9]+\.[0-9]+\.[0-9]+)")
_YANK_TAG = re.compile(r"([a-z0-9][a-z0-9_-]*)/yanked/v([0-9]+\.[0-9]+\.[0-9]+)")
_VERSION_FILE = re.compile(r"([a-z0-9][a-z0-9_-]*)/([0-9]+\.[0-9]+\.[0-9]+)/" + re.escape(MANIFEST_FILE))


class HfStore(Store):
    """A store in Hugging Face Hub repos reached through ``HfApi(endpoint=..., token=...)``.

    ``endpoint`` defaults to huggingface_hub's (``HF_ENDPOINT`` as read at import), ``token`` to the saved login;
    ``cache_dir`` to the Hugging Face cache. ``private`` applies when a push creates the repo.
    Transient failures (429, 5xx, timeouts) are retried ``attempts`` times, re-reading the repo each time.
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
    ) -> None:
        self.endpoint = (endpoint or hf_constants.ENDPOINT).rstrip("/")
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self.private = private
        self.attempts = max(1, attempts)
        self.retry_wait_s = retry_wait_s
        self._token = token
        self._api = HfApi(endpoint=self.endpoint, token=token, library_name="peft-ext")

    def __repr__(self) -> str:  # never the token
        return f"HfStore(endpoint={self.endpoint!r})"

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
        what = f"Downloading {repo} {task} {version}"
        with translated(what, self.endpoint, self._token):
            root = snapshot_download(
                repo,
                revision=commit,
                allow_patterns=[f"{task}/{version}/*"],
                endpoint=self.endpoint,
                token=self._token,
                cache_dir=self.cache_dir,
                library_name="peft-ext",
            )
        folder = Path(root) / task / str(version)
        if not (folder / MANIFEST_FILE).is_file():
            raise NotFoundError(f"{repo}: tag {tag} points to commit {commit[:12]} which has no {task}/{version}/.")
        return folder

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
        last_error: BaseException | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.retry_wait_s * 2 ** (attempt - 1))
            try:
                return self._publish_once(repo, task, files, make_manifest, version, bump)
            except HubError:
                raise
            except Exception as exc:  # classified below: conflicts and transient failures are retried
                if not (status_of(exc) == 412 or is_transient(exc)):
                    raise translate(exc, f"Pushing {repo} {task}", self.endpoint, self._token) from None
                last_error = exc
        if last_error is not None and status_of(last_error) == 412:
            raise ConcurrentUpdateError(f"{repo} kept changing during {self.attempts} attempts to push {task}; retry.")
        assert last_error is not None
        raise translate(last_error, f"Pushing {repo} {task}", self.endpoint, self._token)

    def _publish_once(
        self,
        repo: str,
        task: str,
        files: dict[str, bytes],
        make_manifest: MakeManifest,
        version: SemVer | None,
        bump: str,
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
            self._tag(repo, tag, head, task, chosen, manifest)
            return PublishResult(repo, task, chosen, True, location)
        if tag in tag_targets:  # tagged but gone from main (rewritten history): compare with the tagged bytes
            check_same_files(repo, task, self._manifest_at(repo, task, chosen, tag_targets[tag]), manifest)
            return PublishResult(repo, task, chosen, False, location)
        index = self._index(repo, head)
        index.append(_index_row(manifest))
        yanked = {(m.group(1), m.group(2)) for t in tag_targets if (m := _YANK_TAG.fullmatch(t))}
        prefix = f"{task}/{chosen}/"
        operations = [CommitOperationAdd(prefix + name, data) for name, data in files.items()]
        operations += [
            CommitOperationAdd(prefix + MANIFEST_FILE, manifest.to_json()),
            CommitOperationAdd(INDEX_FILE, _index_json(index)),
            CommitOperationAdd("README.md", self._card(repo, index, yanked).encode()),
        ]
        commit = self._api.create_commit(
            repo, operations, commit_message=f"peft-ext hub: {task} v{chosen}", parent_commit=head
        )
        self._tag(repo, tag, str(commit.oid), task, chosen, manifest)
        return PublishResult(repo, task, chosen, True, location)

    def _tag(self, repo: str, tag: str, commit: str, task: str, version: SemVer, manifest: Manifest) -> None:
        """Tag ``commit`` (known to hold the version); a 409 is fine if the existing tag holds the same bytes."""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.retry_wait_s * 2 ** (attempt - 1))
            try:
                self._api.create_tag(repo, tag=tag, revision=commit, tag_message=f"{task} {version}")
                return
            except Exception as exc:
                if status_of(exc) == 409:
                    target = {t.name: t.target_commit for t in self._api.list_repo_refs(repo).tags}.get(tag)
                    if target is not None:
                        if target != commit:
                            check_same_files(repo, task, self._manifest_at(repo, task, version, target), manifest)
                        return
                if not is_transient(exc) or attempt == self.attempts - 1:
                    raise translate(exc, f"Tagging {repo} {tag}", self.endpoint, self._token) from None

    def set_yanked(self, repo: str, task: str, version: SemVer, yanked: bool, reason: str | None = None) -> None:
        check_repo(repo)
        tag = f"{check_task(task)}/yanked/v{version}"
        with translated(f"{'Yanking' if yanked else 'Restoring'} {repo} {task} {version}", self.endpoint, self._token):
            if yanked:
                target = self._resolve_tag(repo, f"{task}/v{version}", use_cache=False)
                self._api.create_tag(repo, tag=tag, revision=target, tag_message=reason or "yanked", exist_ok=True)
            elif tag in self._tags(repo):
                self._api.delete_tag(repo, tag=tag)
        try:
            self._refresh_card(repo)
        except HubError as exc:  # the yank itself is done; only the card lags behind
            warnings.warn(f"The yank is recorded but the card was not updated: {exc}", stacklevel=2)

    def _refresh_card(self, repo: str) -> None:
        for _ in range(self.attempts):
            with translated(f"Updating the card of {repo}", self.endpoint, self._token):
                head = str(self._api.repo_info(repo, revision="main").sha)
                tags = self._tags(repo)
                yanked = {(m.group(1), m.group(2)) for t in tags if (m := _YANK_TAG.fullmatch(t))}
                card = self._card(repo, self._index(repo, head), yanked).encode()
                try:
                    self._api.create_commit(
                        repo,
                        [CommitOperationAdd("README.md", card)],
                        commit_message="peft-ext hub: update card",
                        parent_commit=head,
                    )
                    return
                except Exception as exc:
                    if status_of(exc) != 412:
                        raise
        raise ConcurrentUpdateError(f"{repo} kept changing while updating its card; run the yank again.")

    # -- helpers ------------------------------------------------------------------------------------------------

    def _tags(self, repo: str) -> list[str]:
        check_repo(repo)
        try:
            with translated(f"Listing versions of {repo}", self.endpoint, self._token):
                return [t.name for t in self._api.list_repo_refs(repo).tags]
        except RemoteError:
            cached = self._cached_tags(repo)
            if cached is None:
                raise
            warnings.warn(f"{self.endpoint} unreachable: versions of {repo} listed from the local cache.", stacklevel=3)
            return cached
        except NotFoundError:
            return []

    def _cached_tags(self, repo: str) -> list[str] | None:
        """Tags whose commit the HF cache knows (from earlier pulls); None if the repo was never pulled."""
        cache = Path(self.cache_dir or hf_constants.HF_HUB_CACHE).expanduser()
        refs = cache / repo_folder_name(repo_id=repo, repo_type="model") / "refs"
        if not refs.is_dir():
            return None
        return [p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file()]

    def _resolve_tag(self, repo: str, tag: str, use_cache: bool = True) -> str:
        """The commit of a version tag; from the cache's refs when known (tags are immutable), else the server."""
        if use_cache:
            try:
                cached = self._api.resolve_revision(repo, revision=tag, cache_dir=self.cache_dir, local_files_only=True)
                return cached.resolved
            except RevisionResolutionError:
                pass
        try:
            with translated(f"Resolving {repo} {tag}", self.endpoint, self._token):
                return self._api.resolve_revision(repo, revision=tag, cache_dir=self.cache_dir).resolved
        except NotFoundError:
            raise NotFoundError(f"{repo}: version tag {tag} does not exist at {self.endpoint}.") from None

    def _download(self, repo: str, filename: str, commit: str) -> bytes:
        path = hf_hub_download(
            repo, filename, revision=commit, endpoint=self.endpoint, token=self._token, cache_dir=self.cache_dir
        )
        return Path(path).read_bytes()

    def _manifest_at(self, repo: str, task: str, version: SemVer, commit: str) -> Manifest:
        name = f"{task}/{version}/{MANIFEST_FILE}"
        return Manifest.from_json(self._download(repo, name, commit), f"{repo}/{name}@{commit[:12]}")

    def _index(self, repo: str, commit: str) -> list[dict[str, Any]]:
        try:
            rows = json.loads(self._download(repo, INDEX_FILE, commit)).get("versions")
        except EntryNotFoundError:
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
            )
            for r in index
        ]
        return render_card(repo, rows, [str(r["base_model_id"]) for r in index if r.get("base_model_id")])


def _index_row(manifest: Manifest) -> dict[str, Any]:
    row = card_row(manifest, False)
    ids = hub_base_ids([manifest])
    return {
        "task": row.task,
        "version": row.version,
        "base_label": row.base_model,
        "base_model_id": ids[0] if ids else None,
        "created_at": row.created_at,
    }


def _index_json(index: list[dict[str, Any]]) -> bytes:
    return (json.dumps({"schema_version": 1, "versions": index}, indent=1, sort_keys=True) + "\n").encode()
