"""The store contract, run against LocalStore and HfStore (over HTTP to the fake Hub) alike."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fake_hub_server import FakeHub
from hub_testutils import REPO, TOKEN
from safetensors.numpy import load_file

import hub
from hub import HfStore, Store
from hub.errors import (
    IntegrityError,
    NoMatchingVersionError,
    NotFoundError,
    VersionExistsError,
)
from hub.manifest import MANIFEST_FILE, read_manifest

MakeAdapter = Callable[..., Path]


def listed(store: Store, task: str = "coach") -> list[str]:
    return [str(e.version) for e in hub.versions(REPO, task, store=store)]


def test_push_then_pull_round_trips_the_bytes(store: Store, adapter: MakeAdapter) -> None:
    source = adapter(seed=1)
    result = hub.push(source, REPO, task="coach", store=store, metrics={"acc": 0.5}, training_data_hash="abc")
    assert (str(result.version), result.created) == ("1.0.0", True)
    folder = hub.pull(REPO, "coach", store=store)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (folder / name).read_bytes() == (source / name).read_bytes()
    manifest = read_manifest(folder)
    assert (manifest.task, str(manifest.version), manifest.metrics) == ("coach", "1.0.0", {"acc": 0.5})
    assert manifest.training_data_hash == "abc" and manifest.parent_version is None
    assert manifest.adapter == {"peft_type": "PROMPT_TUNING", "kind": "input", "num_virtual_tokens": 4, "token_dim": 8}


def test_bumps_and_explicit_versions(store: Store, adapter: MakeAdapter) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=store)
    hub.push(adapter(seed=2), REPO, task="coach", store=store)
    hub.push(adapter(seed=3), REPO, task="coach", bump="minor", store=store)
    hub.push(adapter(seed=4), REPO, task="coach", bump="major", store=store)
    hub.push(adapter(seed=5), REPO, task="coach", version="1.1.1", store=store)
    assert listed(store) == ["1.0.0", "1.0.1", "1.1.0", "1.1.1", "2.0.0"]
    assert str(hub.show(REPO, "coach", "1.1.1", store=store).manifest.parent_version) == "1.1.0"


def test_same_bytes_is_a_no_op_and_other_bytes_are_refused(store: Store, adapter: MakeAdapter) -> None:
    first = adapter(seed=1)
    hub.push(first, REPO, task="coach", version="1.0.0", store=store)
    again = hub.push(adapter(seed=1), REPO, task="coach", version="1.0.0", store=store)
    assert not again.created
    with pytest.raises(VersionExistsError, match="immutable"):
        hub.push(adapter(seed=2), REPO, task="coach", version="1.0.0", store=store)
    assert listed(store) == ["1.0.0"]
    pulled = hub.pull(REPO, "coach", "1.0.0", store=store)
    assert (pulled / "adapter_model.safetensors").read_bytes() == (first / "adapter_model.safetensors").read_bytes()


def test_constraints_pick_the_highest_match(store: Store, adapter: MakeAdapter) -> None:
    for seed, version in enumerate(["1.0.0", "1.2.0", "1.2.5", "1.3.0", "2.0.0"]):
        hub.push(adapter(seed=seed), REPO, task="coach", version=version, store=store)
    picks = {spec: str(hub.resolve(REPO, "coach", spec, store=store)) for spec in ["^1.2", "~1.2", "latest", "1.2.0"]}
    assert picks == {"^1.2": "1.3.0", "~1.2": "1.2.5", "latest": "2.0.0", "1.2.0": "1.2.0"}
    assert read_manifest(hub.pull(REPO, "coach", "~1.2", store=store)).version == hub.SemVer(1, 2, 5)
    with pytest.raises(NoMatchingVersionError, match="available"):
        hub.pull(REPO, "coach", "^3.0", store=store)


def test_yank_hides_from_constraints_but_not_from_exact_pulls(store: Store, adapter: MakeAdapter) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=store)
    hub.push(adapter(seed=2), REPO, task="coach", store=store)
    hub.yank(REPO, "coach", "1.0.1", reason="regressed", store=store)
    entries = {str(e.version): e.yanked for e in hub.versions(REPO, "coach", store=store)}
    assert entries == {"1.0.0": False, "1.0.1": True}
    assert str(hub.resolve(REPO, "coach", "latest", store=store)) == "1.0.0"
    assert read_manifest(hub.pull(REPO, "coach", "1.0.1", store=store)).version == hub.SemVer(1, 0, 1)
    assert hub.show(REPO, "coach", "1.0.1", store=store).yanked
    hub.yank(REPO, "coach", "1.0.1", undo=True, store=store)
    assert str(hub.resolve(REPO, "coach", "latest", store=store)) == "1.0.1"
    with pytest.raises(NotFoundError):
        hub.yank(REPO, "coach", "9.9.9", store=store)


def test_many_tasks_in_one_repo(store: Store, adapter: MakeAdapter) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=store)
    hub.push(adapter(seed=2, n=3, dim=8), REPO, task="summarise", store=store)
    hub.push(adapter(seed=3), REPO, task="summarise", store=store)
    assert hub.tasks(REPO, store=store) == ["coach", "summarise"]
    assert listed(store, "summarise") == ["1.0.0", "1.0.1"]
    assert listed(store, "other") == []
    assert hub.tasks("org/empty", store=store) == []
    with pytest.raises(NoMatchingVersionError):
        hub.pull(REPO, "other", store=store)


def test_missing_exact_version_is_not_found(store: Store, adapter: MakeAdapter) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=store)
    with pytest.raises(NotFoundError):
        hub.pull(REPO, "coach", "4.0.0", store=store)
    with pytest.raises(NotFoundError):
        hub.pull("org/nothing-here", "coach", "1.0.0", store=store)


def damage_stored(store: Store, request: pytest.FixtureRequest, name: str, mutate: Callable[[bytes], bytes]) -> Store:
    """Change a stored file of coach 1.0.0 where the store keeps it; return a store that has no cached copy."""
    if isinstance(store, hub.LocalStore):
        path = store.root / REPO / "coach" / "1.0.0" / name
        path.write_bytes(mutate(path.read_bytes()))
        return store
    server: FakeHub = request.getfixturevalue("fake_hub")
    files = server.repos[REPO].commits[server.repos[REPO].tags["coach/v1.0.0"]].files
    files[f"coach/1.0.0/{name}"] = mutate(files[f"coach/1.0.0/{name}"])
    tmp: Path = request.getfixturevalue("tmp_path")
    return HfStore(endpoint=server.url, token=TOKEN, cache_dir=tmp / "fresh_cache", retry_wait_s=0.01)


def test_tampered_file_is_detected_on_pull(store: Store, adapter: MakeAdapter, request: pytest.FixtureRequest) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=store)
    reader = damage_stored(store, request, "adapter_model.safetensors", lambda b: b[:-4] + b"\0\0\0\0")
    with pytest.raises(IntegrityError, match="adapter_model.safetensors") as caught:
        hub.pull(REPO, "coach", "1.0.0", store=reader)
    assert "yank coach 1.0.0" in str(caught.value).lower()


def test_manifest_hash_mismatch_is_detected(store: Store, adapter: MakeAdapter, request: pytest.FixtureRequest) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=store)

    def wrong_hash(data: bytes) -> bytes:
        raw = json.loads(data)
        raw["files"]["adapter_config.json"]["sha256"] = "0" * 64
        return json.dumps(raw).encode()

    reader = damage_stored(store, request, MANIFEST_FILE, wrong_hash)
    with pytest.raises(IntegrityError, match="adapter_config.json"):
        hub.pull(REPO, "coach", "1.0.0", store=reader)


def test_card_describes_the_repo(store: Store, adapter: MakeAdapter, tiny_llama, tmp_path: Path) -> None:  # noqa: ANN001
    build, tokenizer = tiny_llama
    model = build()
    model.config.name_or_path = "org/tiny-base"
    hub.push(adapter(seed=1), REPO, task="coach", store=store, base_model=model, tokenizer=tokenizer)
    hub.push(adapter(seed=2), REPO, task="coach", store=store, base_model=model)
    hub.yank(REPO, "coach", "1.0.1", store=store)
    card = read_card(store, tmp_path)
    assert "library_name: peft" in card and "base_model: org/tiny-base" in card
    assert "base_model_relation: adapter" in card and "task:coach" in card
    assert "| coach | 1.0.0 | input | org/tiny-base |" in card and "| yanked |" in card
    assert TOKEN not in card


def read_card(store: Store, tmp_path: Path) -> str:
    if isinstance(store, hub.LocalStore):
        return (store.root / REPO / "README.md").read_text()
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(REPO, "README.md", endpoint=store.endpoint, cache_dir=tmp_path / "card_cache")
    return Path(path).read_text()


def test_pulled_folder_loads_with_peft(store: Store, tiny_llama, tmp_path: Path) -> None:  # noqa: ANN001
    from peft import PeftModel, PromptTuningConfig, get_peft_model

    build, _ = tiny_llama
    peft_model = get_peft_model(build(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    result = hub.push(peft_model, REPO, task="coach", store=store, base_model=build())
    assert result.created
    folder = hub.pull(REPO, "coach", "^1.0", store=store, base_model=build())
    loaded = PeftModel.from_pretrained(build(), str(folder))
    saved = load_file(str(folder / "adapter_model.safetensors"))["prompt_embeddings"]
    live = loaded.prompt_encoder["default"].embedding.weight.detach().numpy()
    np.testing.assert_array_equal(live, saved)
