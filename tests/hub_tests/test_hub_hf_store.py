"""HfStore specifics over HTTP: layout, tags, races, faults (500/429/timeouts), cache and offline use, the token."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_hub_server import FakeHub, Fault
from hub_testutils import REPO, TOKEN
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

import hub
from hub import HfStore, Manifest
from hub.errors import ConcurrentUpdateError, RemoteError, VersionExistsError
from hub.fingerprints import sha256_bytes

MakeAdapter = Callable[..., Path]


def check_no_tag_without_commit(server: FakeHub) -> list[str]:
    """Every version tag points to an existing commit holding that version, with files matching its manifest."""
    repo = server.repos.get(REPO)
    if repo is None:
        return []
    versions = []
    for tag, oid in repo.tags.items():
        assert oid in repo.commits, f"tag {tag} points to a missing commit"
        files = repo.commits[oid].files
        task, _, version = tag.rpartition("/v")
        if "/yanked" in task:
            continue
        manifest = Manifest.from_json(files[f"{task}/{version}/peft_ext_manifest.json"])
        for name, entry in manifest.files.items():
            assert sha256_bytes(files[f"{task}/{version}/{name}"]) == entry.sha256
        versions.append(tag)
    return sorted(versions)


def version_commits(server: FakeHub, title: str) -> int:
    return sum(c.title == title for c in server.repos[REPO].commits.values())


def test_layout_one_commit_and_one_tag_per_version(hf_store: HfStore, fake_hub: FakeHub, adapter: MakeAdapter) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=hf_store)
    hub.push(adapter(seed=2), REPO, task="chat", store=hf_store)
    repo = fake_hub.repos[REPO]
    assert set(repo.tags) == {"coach/v1.0.0", "chat/v1.0.0"}
    head = repo.commits[repo.branches["main"]]
    assert {"README.md", "peft_ext_index.json", "coach/1.0.0/adapter_config.json"} <= set(head.files)
    assert {"coach/1.0.0/adapter_model.safetensors", "coach/1.0.0/peft_ext_manifest.json"} <= set(head.files)
    assert len(repo.commits) == 3  # initial commit + one per version
    assert repo.commits[repo.tags["coach/v1.0.0"]].title == "peft-ext hub: coach v1.0.0"
    assert check_no_tag_without_commit(fake_hub) == ["chat/v1.0.0", "coach/v1.0.0"]


def test_stock_peft_can_load_a_version_by_subfolder(hf_store: HfStore, fake_hub: FakeHub, adapter: MakeAdapter) -> None:
    from huggingface_hub import snapshot_download

    hub.push(adapter(seed=1), REPO, task="coach", store=hf_store)
    root = snapshot_download(REPO, revision="coach/v1.0.0", endpoint=fake_hub.url, cache_dir=hf_store.cache_dir)
    assert (Path(root) / "coach/1.0.0/adapter_config.json").is_file()


def test_concurrent_writers_get_distinct_versions(fake_hub: FakeHub, tmp_path: Path, adapter: MakeAdapter) -> None:
    folders = [adapter(seed=i) for i in range(6)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        store = HfStore(
            endpoint=fake_hub.url, token=TOKEN, cache_dir=tmp_path / f"c{i}", attempts=20, retry_wait_s=0.01
        )
        try:
            for folder in folders[i::3]:
                hub.push(folder, REPO, task="coach", store=store)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    HfApi(endpoint=fake_hub.url, token=TOKEN).create_repo(REPO)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert check_no_tag_without_commit(fake_hub) == [f"coach/v1.0.{i}" for i in range(6)]


def test_stale_parent_is_retried(hf_store: HfStore, fake_hub: FakeHub, adapter: MakeAdapter, monkeypatch) -> None:  # noqa: ANN001
    api = hf_store._api
    real = api.create_commit
    calls = []

    def racing_commit(*args, **kwargs):  # noqa: ANN002,ANN003,ANN202
        if not calls:  # someone else commits first: our parent is now stale -> 412 -> re-plan
            other = HfApi(endpoint=fake_hub.url, token=TOKEN)
            other.create_commit(REPO, [CommitOperationAdd("notes.txt", b"hi")], commit_message="other writer")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "create_commit", racing_commit)
    hub.push(adapter(seed=1), REPO, task="coach", store=hf_store)
    assert len(calls) == 2
    assert check_no_tag_without_commit(fake_hub) == ["coach/v1.0.0"]


def test_racing_push_of_other_bytes_to_the_same_version_is_refused(
    hf_store: HfStore,
    fake_hub: FakeHub,
    adapter: MakeAdapter,
    monkeypatch,  # noqa: ANN001
) -> None:
    rival = HfStore(endpoint=fake_hub.url, token=TOKEN, cache_dir=hf_store.cache_dir)
    real = hf_store._api.create_commit
    rival_folder = adapter(seed=9)

    def racing_commit(*args, **kwargs):  # noqa: ANN002,ANN003,ANN202
        monkeypatch.setattr(hf_store._api, "create_commit", real)
        hub.push(rival_folder, REPO, task="coach", version="1.0.0", store=rival)
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_store._api, "create_commit", racing_commit)
    with pytest.raises(VersionExistsError):
        hub.push(adapter(seed=1), REPO, task="coach", version="1.0.0", store=hf_store)
    assert check_no_tag_without_commit(fake_hub) == ["coach/v1.0.0"]


@pytest.mark.parametrize(
    "fault",
    [
        Fault("POST", r"/commit/", status=500),
        Fault("POST", r"/commit/", status=500, after=True),  # committed, answer lost
        Fault("POST", r"/commit/", status=429),
        Fault("POST", r"/tag/", status=500),
        Fault("POST", r"/tag/", status=502, after=True),  # tagged, answer lost
        Fault("POST", r"/tag/", status=429, count=2),
        Fault("GET", r"/refs$", status=503),
        Fault("GET", r"/revision/main$", status=500),
        Fault("POST", r"/preupload/", status=500),
    ],
    ids=lambda f: f"{f.method}-{f.path.strip('/$')}-{f.status}{'-after' if f.after else ''}",
)
def test_transient_faults_are_retried(hf_store: HfStore, fake_hub: FakeHub, adapter: MakeAdapter, fault: Fault) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=hf_store)
    fake_hub.faults.append(fault)
    result = hub.push(adapter(seed=2), REPO, task="coach", store=hf_store)
    assert str(result.version) == "1.0.1" and fault.count == 0
    assert check_no_tag_without_commit(fake_hub) == ["coach/v1.0.0", "coach/v1.0.1"]
    assert version_commits(fake_hub, "peft-ext hub: coach v1.0.1") == 1


@pytest.mark.parametrize("path", [r"/commit/", r"/tag/"])
def test_timeouts_after_the_effect_leave_one_version(
    fake_hub: FakeHub, tmp_path: Path, adapter: MakeAdapter, path: str
) -> None:
    hf_store = HfStore(endpoint=fake_hub.url, token=TOKEN, cache_dir=tmp_path / "c", retry_wait_s=0.01, timeout_s=1)
    fake_hub.faults.append(Fault("POST", path, delay=2.0, after=True, status=200))
    assert hub.push(adapter(seed=1), REPO, task="coach", store=hf_store).version == hub.SemVer(1, 0, 0)
    assert check_no_tag_without_commit(fake_hub) == ["coach/v1.0.0"]
    assert version_commits(fake_hub, "peft-ext hub: coach v1.0.0") == 1


@pytest.mark.parametrize("path", [r"/commit/", r"/tag/"])
def test_persistent_failure_leaves_no_tag_without_commit(
    hf_store: HfStore, fake_hub: FakeHub, adapter: MakeAdapter, path: str
) -> None:
    fake_hub.faults.append(Fault("POST", path, status=500, count=1000))
    with pytest.raises(RemoteError, match="HTTP 500"):
        hub.push(adapter(seed=1), REPO, task="coach", store=hf_store)
    assert check_no_tag_without_commit(fake_hub) == []
    assert hub.versions(REPO, "coach", store=hf_store) == []  # an untagged commit is not a version
    fake_hub.faults.clear()
    result = hub.push(adapter(seed=1), REPO, task="coach", store=hf_store)  # the same push repairs it
    assert result.created and check_no_tag_without_commit(fake_hub) == ["coach/v1.0.0"]
    assert version_commits(fake_hub, "peft-ext hub: coach v1.0.0") == 1


def test_endless_races_end_with_a_named_error(hf_store: HfStore, fake_hub: FakeHub, adapter: MakeAdapter) -> None:
    fake_hub.faults.append(Fault("POST", r"/commit/", status=412, count=1000))
    with pytest.raises(ConcurrentUpdateError):
        hub.push(adapter(seed=1), REPO, task="coach", store=hf_store)
    assert check_no_tag_without_commit(fake_hub) == []


def test_cached_pull_makes_no_request_and_offline_mode_works(
    hf_store: HfStore,
    fake_hub: FakeHub,
    adapter: MakeAdapter,
    monkeypatch,  # noqa: ANN001
) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=hf_store)
    hub.push(adapter(seed=2), REPO, task="coach", store=hf_store)
    first = hub.pull(REPO, "coach", "1.0.0", store=hf_store)
    hub.pull(REPO, "coach", "1.0.1", store=hf_store)
    before = len(fake_hub.requests)
    assert hub.pull(REPO, "coach", "1.0.0", store=hf_store) == first
    assert fake_hub.requests[before:] == []
    hub.pull(REPO, "coach", "^1.0", store=hf_store)
    assert fake_hub.requests[before:] == [("GET", f"/api/models/{REPO}/refs")]
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    before = len(fake_hub.requests)
    assert hub.pull(REPO, "coach", "1.0.0", store=hf_store) == first
    with pytest.warns(UserWarning, match="local cache"):
        assert hub.resolve(REPO, "coach", "latest", store=hf_store) == hub.SemVer(1, 0, 1)
    assert fake_hub.requests[before:] == []
    with pytest.raises(RemoteError, match="offline"):
        hub.versions("org/never-pulled", "coach", store=hf_store)


def test_evict_drops_the_cached_revision_and_says_whether_there_was_one(
    hf_store: HfStore, fake_hub: FakeHub, adapter: MakeAdapter, tmp_path: Path
) -> None:
    v100 = hub.SemVer(1, 0, 0)
    assert HfStore(endpoint=fake_hub.url, cache_dir=tmp_path / "no_cache_yet").evict(REPO, "coach", v100) is False
    hub.push(adapter(seed=1), REPO, task="coach", store=hf_store)
    assert hf_store.evict(REPO, "coach", v100) is False  # pushed, never pulled
    folder = hub.pull(REPO, "coach", "1.0.0", store=hf_store)
    good = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert hf_store.evict(REPO, "coach", v100) is True
    assert not folder.exists() and hf_store.evict(REPO, "coach", v100) is False
    before = len(fake_hub.requests)
    assert hub.pull(REPO, "coach", "1.0.0", store=hf_store) == folder
    assert any("/resolve/" in path for _, path in fake_hub.requests[before:])  # downloaded again
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == good


def test_a_damaged_blob_two_cached_versions_share_is_dropped_for_both(hf_store: HfStore, adapter: MakeAdapter) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=hf_store)
    hub.push(adapter(seed=2), REPO, task="coach", store=hf_store)
    folders = [hub.pull(REPO, "coach", v, store=hf_store) for v in ("1.0.0", "1.0.1")]
    config = (folders[0] / "adapter_config.json").read_bytes()
    blob = (folders[0] / "adapter_config.json").resolve()
    assert blob == (folders[1] / "adapter_config.json").resolve()  # same bytes in both versions: one blob
    blob.write_bytes(b" " * len(config))
    # huggingface_hub's delete_revisions keeps a blob another revision links; a damaged one must go all the same.
    for version in ("1.0.0", "1.0.1"):
        assert (hub.pull(REPO, "coach", version, store=hf_store) / "adapter_config.json").read_bytes() == config


def test_token_never_leaks(fake_hub: FakeHub, tmp_path: Path, adapter: MakeAdapter, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.DEBUG)
    good = HfStore(endpoint=fake_hub.url, token=TOKEN, cache_dir=tmp_path / "c", retry_wait_s=0.01)
    hub.push(adapter(seed=1), REPO, task="coach", store=good)
    hub.yank(REPO, "coach", "1.0.0", reason="test", store=good)
    wrong = "hf_WRONGsecret000000000000"
    bad = HfStore(endpoint=fake_hub.url, token=wrong, cache_dir=tmp_path / "c", retry_wait_s=0.01)
    with pytest.raises(RemoteError) as caught:
        hub.push(adapter(seed=2), REPO, task="coach", store=bad)
    fake_hub.faults.append(Fault("GET", r"/refs$", status=500, count=1000))
    with pytest.raises(RemoteError) as caught_500:
        hub.versions("org/other", "coach", store=good)
    readme = fake_hub.repos[REPO].commits[fake_hub.repos[REPO].branches["main"]].files["README.md"].decode()
    texts = [str(caught.value), str(caught_500.value), repr(good), repr(bad), readme, caplog.text]
    for secret in (TOKEN, wrong):
        assert not any(secret in text for text in texts)
    assert "401" in str(caught.value)


def test_fake_server_answers_like_the_hub(fake_hub: FakeHub) -> None:
    api = HfApi(endpoint=fake_hub.url, token=TOKEN)
    api.create_repo(REPO)
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    head = api.repo_info(REPO).sha
    api.create_tag(REPO, tag="t/v1.0.0", revision=head)
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_tag(REPO, tag="t/v1.0.0", revision=head)
    assert exists.value.response.status_code == 409
    with pytest.raises(RevisionNotFoundError):
        api.create_tag(REPO, tag="x", revision="f" * 40)
    with pytest.raises(HfHubHTTPError) as bad_name:
        api.create_tag(REPO, tag="bad name..lock", revision=head)
    assert bad_name.value.response.status_code == 400
    api.create_commit(REPO, [CommitOperationAdd("a.txt", b"1")], commit_message="one", parent_commit=head)
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit(REPO, [CommitOperationAdd("a.txt", b"2")], commit_message="two", parent_commit=head)
    assert stale.value.response.status_code == 412
    api.create_branch(REPO, branch="dev")
    refs = api.list_repo_refs(REPO)
    assert {b.name for b in refs.branches} == {"main", "dev"} and [t.name for t in refs.tags] == ["t/v1.0.0"]
    assert [c.title for c in api.list_repo_commits(REPO)] == ["one", "initial commit"]
    assert api.repo_info(REPO, revision=head[:7]).sha == head
    api.delete_tag(REPO, tag="t/v1.0.0")
    with pytest.raises(RevisionNotFoundError):
        api.delete_tag(REPO, tag="t/v1.0.0")
