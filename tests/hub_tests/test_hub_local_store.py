"""LocalStore specifics: default root, many writer processes, pushes killed at random points."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
from hub_testutils import REPO, make_adapter

import hub
from hub import LocalStore
from hub.manifest import read_manifest, verify_folder
from hub.stores.local import default_root

FORK = multiprocessing.get_context("fork")  # children inherit the imports: no 3 s torch import per process


def push_many(root: str, work: str, worker: int, count: int) -> None:
    store = LocalStore(root)
    for j in range(count):
        folder = make_adapter(Path(work) / f"w{worker}_{j}", seed=worker * 1000 + j)
        assert hub.push(folder, REPO, task="coach", store=store).created


def push_forever(root: str, work: str) -> None:
    store = LocalStore(root)
    for j in range(10**6):
        hub.push(make_adapter(Path(work) / f"a{j}", seed=j), REPO, task="coach", store=store)


def assert_consistent(store: LocalStore) -> list[str]:
    """Every visible version is whole and verifies; returns the versions."""
    found = []
    for entry in hub.versions(REPO, "coach", store=store):
        folder = store.root / REPO / "coach" / str(entry.version)
        manifest = read_manifest(folder)
        verify_folder(folder, manifest)
        assert manifest.version == entry.version
        found.append(str(entry.version))
    return found


def test_default_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PEFT_EXT_HUB_ROOT", raising=False)
    monkeypatch.delenv("PEFT_EXT_CACHE", raising=False)
    assert default_root() == Path.home() / ".cache" / "peft_ext" / "hub"
    monkeypatch.setenv("PEFT_EXT_CACHE", str(tmp_path / "cache"))
    assert LocalStore().root == tmp_path / "cache" / "hub"
    monkeypatch.setenv("PEFT_EXT_HUB_ROOT", str(tmp_path / "hubroot"))
    assert LocalStore().root == tmp_path / "hubroot"
    assert "hubroot" in repr(LocalStore())


def test_eight_processes_push_eighty_intact_versions(tmp_path: Path) -> None:
    root, work = str(tmp_path / "store"), str(tmp_path / "work")
    workers = [FORK.Process(target=push_many, args=(root, work, i, 10)) for i in range(8)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    assert [p.exitcode for p in workers] == [0] * 8
    store = LocalStore(root)
    assert assert_consistent(store) == [f"1.0.{i}" for i in range(80)]
    contents = {
        read_manifest(store.root / REPO / "coach" / f"1.0.{i}").files["adapter_model.safetensors"].sha256
        for i in range(80)
    }
    assert len(contents) == 80  # every push landed in its own version


def test_pushes_killed_at_random_points_leave_the_store_consistent(tmp_path: Path) -> None:
    root, rng = str(tmp_path / "store"), random.Random(1234)
    store = LocalStore(root)
    for round_ in range(12):
        child = FORK.Process(target=push_forever, args=(root, str(tmp_path / f"work{round_}")))
        child.start()
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        assert_consistent(store)
    before = assert_consistent(store)
    result = hub.push(make_adapter(tmp_path / "after", seed=999_999), REPO, task="coach", store=store)  # lock free
    assert assert_consistent(store) == [*before, str(result.version)]
    assert not any((store.root / REPO / ".staging").iterdir())  # leftovers of killed pushes are gone
    assert "| coach |" in (store.root / REPO / "README.md").read_text()
