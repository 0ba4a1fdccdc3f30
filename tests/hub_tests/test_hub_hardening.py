"""Issue 9, item by item: each test failed on the code before the fix (commit 5446c7e) and names its item.

1 poisoned task, 2 configs PEFT cannot load, 3 integrity gaps on pull, 4 a corrupted download poisoning the cache,
5 fragile pulls (5xx, stalls, truncation, offline / down / 5xx without a cached copy, ``latest`` while unreachable),
6 leaked tokens, 8 a push killed after its rename. Item 7 (unnamed errors) is in test_hub_bad_input_corpus.py.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_hub_server import FakeHub, Fault
from fault_proxy import FaultProxy, ProxyFault
from hub_testutils import REPO, TOKEN, edit_stored
from huggingface_hub import constants as hf_constants
from safetensors.numpy import load_file

import hub
import hub.stores.local
from hub import HfStore, LocalStore, Store
from hub.cli import main
from hub.errors import (
    HubError,
    IntegrityError,
    InvalidAdapterConfigError,
    InvalidEndpointError,
    InvalidMetadataError,
    ManifestError,
    RemoteError,
    RemoteTimeoutError,
    UnexpectedFileError,
    UnsupportedPeftTypeError,
)
from hub.manifest import MANIFEST_FILE

MakeAdapter = Callable[..., Path]
WEIGHTS = "adapter_model.safetensors"


def listed(store: Store) -> list[str]:
    return [str(e.version) for e in hub.versions(REPO, "coach", store=store)]


def card_of(store: Store, tmp_path: Path) -> str:
    if isinstance(store, LocalStore):
        return (store.root / REPO / "README.md").read_text()
    from huggingface_hub import hf_hub_download

    cache = tmp_path / f"card_{len(list(tmp_path.iterdir()))}"
    return Path(hf_hub_download(REPO, "README.md", endpoint=store.endpoint, cache_dir=cache)).read_text()


# -- 1: a task can be poisoned --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"training_data_hash": 123},
        {"metrics": "x"},
        {"metrics": {"loss": float("nan")}},
        {"metrics": {"loss": float("inf")}},
        {"metrics": {1: 2.0}},
        {"metrics": {"pair": (1, 2)}},
    ],
    ids=["hash-int", "metrics-str", "metrics-nan", "metrics-inf", "metrics-int-key", "metrics-tuple"],
)
def test_item1_metadata_that_would_poison_a_task_is_refused(
    store: Store, adapter: MakeAdapter, bad: dict, tmp_path: Path
) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=store, metrics={"acc": 0.5}, training_data_hash="sha256:1")
    with pytest.raises(InvalidMetadataError):
        hub.push(adapter(seed=2), REPO, task="coach", store=store, **dict(bad))
    assert listed(store) == ["1.0.0"]
    assert str(hub.show(REPO, "coach", "latest", store=store).manifest.version) == "1.0.0"
    assert hub.pull(REPO, "coach", "^1.0", store=store).is_dir()
    assert "| coach | 1.0.0 |" in card_of(store, tmp_path)
    if isinstance(store, LocalStore):
        staging = store.root / REPO / ".staging"
        assert not staging.exists() or not any(staging.iterdir())


# -- 2: stored versions PEFT cannot load ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"peft_type": "NOT_A_PEFT_TYPE"}, UnsupportedPeftTypeError),
        ({"peft_type": "LORA"}, UnsupportedPeftTypeError),
        ({"num_virtual_tokens": "4"}, InvalidAdapterConfigError),
        ({"num_virtual_tokens": 4.0}, InvalidAdapterConfigError),
        ({"num_virtual_tokens": True}, InvalidAdapterConfigError),
    ],
    ids=["unknown-type", "lora", "nvt-str", "nvt-float", "nvt-bool"],
)
def test_item2_configs_peft_cannot_load_as_soft_prompts_are_refused(
    store: Store, adapter: MakeAdapter, change: dict, error: type
) -> None:
    with pytest.raises(error):
        hub.push(adapter(seed=1, config=dict(change)), REPO, task="coach", store=store)
    assert hub.tasks(REPO, store=store) == []


def test_item2_every_soft_prompt_type_peft_loads_is_accepted(store: Store, adapter: MakeAdapter) -> None:
    for i, peft_type in enumerate(["PROMPT_TUNING", "P_TUNING", "SOFT_PROMPT"]):
        hub.push(adapter(seed=i, config={"peft_type": peft_type}), REPO, task="coach", store=store)
    assert listed(store) == ["1.0.0", "1.0.1", "1.0.2"]


# -- 3: integrity gaps on pull --------------------------------------------------------------------------------------


def test_item3_a_file_dropped_into_a_stored_version_is_refused(
    store: Store, adapter: MakeAdapter, request: pytest.FixtureRequest
) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=store)
    reader = edit_stored(store, request, "1.0.0", lambda files: files.update({"adapter_model.bin": b"\x80pickle"}))
    with pytest.raises(UnexpectedFileError, match="adapter_model.bin"):
        hub.pull(REPO, "coach", "1.0.0", store=reader)


def test_item3_a_manifest_without_its_weights_entry_is_refused(
    store: Store, adapter: MakeAdapter, request: pytest.FixtureRequest
) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=store)
    other = (adapter(seed=2) / WEIGHTS).read_bytes()

    def swap(files: dict[str, bytes]) -> None:
        manifest = json.loads(files[MANIFEST_FILE])
        del manifest["files"][WEIGHTS]
        files[MANIFEST_FILE] = json.dumps(manifest).encode()
        files[WEIGHTS] = other

    reader = edit_stored(store, request, "1.0.0", swap)
    with pytest.raises(ManifestError, match=WEIGHTS):
        hub.pull(REPO, "coach", "1.0.0", store=reader)


# -- 4: a corrupted download poisons the cache for good -------------------------------------------------------------


def test_item4_a_corrupted_download_is_evicted_and_downloaded_again(
    proxied_store: HfStore, fault_proxy: FaultProxy, adapter: MakeAdapter
) -> None:
    source = adapter(seed=1)
    hub.push(source, REPO, task="coach", store=proxied_store)
    fault_proxy.faults.append(ProxyFault("GET", r"/resolve/.*adapter_model\.safetensors$", kind="corrupt"))
    folder = hub.pull(REPO, "coach", "1.0.0", store=proxied_store)
    assert fault_proxy.served("corrupt") == 1
    assert (folder / WEIGHTS).read_bytes() == (source / WEIGHTS).read_bytes()
    # A cache damaged earlier (the blob behind the link) heals the same way, without touching the good copy's bytes.
    blob = (folder / WEIGHTS).resolve()
    blob.write_bytes(b"\0" * blob.stat().st_size)
    again = hub.pull(REPO, "coach", "1.0.0", store=proxied_store)
    assert (again / WEIGHTS).read_bytes() == (source / WEIGHTS).read_bytes()


def test_item4_a_damaged_stored_version_names_the_real_file_and_says_what_to_do(
    hf_store: HfStore, fake_hub: FakeHub, adapter: MakeAdapter, request: pytest.FixtureRequest
) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=hf_store)
    reader = edit_stored(hf_store, request, "1.0.0", lambda f: f.update({WEIGHTS: f[WEIGHTS][:-4] + b"\0\0\0\0"}))
    with pytest.raises(IntegrityError) as caught:
        hub.pull(REPO, "coach", "1.0.0", store=reader)
    message = str(caught.value)
    assert "/blobs/" in message and "downloaded again" in message and "Yank coach 1.0.0" in message
    assert "delete it and pull again" not in message


# -- 5: pulls as robust as pushes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        ProxyFault("GET", r"/resolve/.*adapter_model\.safetensors$", status=500),
        ProxyFault("GET", r"/resolve/.*adapter_model\.safetensors$", status=503, count=2),
        ProxyFault("HEAD", r"/resolve/.*adapter_config\.json$", status=502),
        ProxyFault("GET", r"/tree/", status=500),
        ProxyFault("GET", r"/revision/", status=500),
        ProxyFault("GET", r"/resolve/.*adapter_model\.safetensors$", kind="truncate"),
        ProxyFault("GET", r"/resolve/.*adapter_model\.safetensors$", kind="stall", delay=4.0),
        ProxyFault("GET", r"/revision/", kind="stall", delay=4.0),
    ],
    ids=lambda f: f"{f.method}-{f.path.split('/')[1] or 'x'}-{f.kind}{f.status if f.kind == 'status' else ''}",
)
def test_item5_pulls_retry_5xx_truncation_and_stalls(
    proxied_store: HfStore, fault_proxy: FaultProxy, adapter: MakeAdapter, fault: ProxyFault
) -> None:
    source = adapter(seed=1)
    hub.push(source, REPO, task="coach", store=proxied_store)
    fault = ProxyFault(**vars(fault))  # parametrize shares the object between runs
    fault_proxy.faults.append(fault)
    folder = hub.pull(REPO, "coach", "1.0.0", store=proxied_store)
    assert fault.count == 0
    assert (folder / WEIGHTS).read_bytes() == (source / WEIGHTS).read_bytes()


@pytest.mark.parametrize(
    "fault",
    [
        ProxyFault("POST", r"/commit/", status=500, after=True),
        ProxyFault("POST", r"/commit/", kind="truncate"),
        ProxyFault("POST", r"/commit/", kind="stall", delay=4.0),
        ProxyFault("POST", r"/preupload/", kind="truncate"),
        ProxyFault("POST", r"/tag/", status=503, after=True),
        ProxyFault("POST", r"/tag/", kind="stall", delay=4.0),
        ProxyFault("GET", r"/resolve/.*peft_ext_index\.json$", kind="corrupt"),
    ],
    ids=lambda f: (
        f"{f.method}-{f.path.strip('/').split('/')[0] or 'x'}-{f.kind}{f.status if f.kind == 'status' else ''}"
    ),
)
def test_pushes_through_a_faulty_proxy_leave_exactly_one_version(
    proxied_store: HfStore, fault_proxy: FaultProxy, fake_hub: FakeHub, adapter: MakeAdapter, fault: ProxyFault
) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=proxied_store)
    fault = ProxyFault(**vars(fault))
    fault_proxy.faults.append(fault)
    result = hub.push(adapter(seed=2), REPO, task="coach", store=proxied_store)
    assert fault.count == 0 and str(result.version) == "1.0.1"
    repo = fake_hub.repos[REPO]
    assert sorted(repo.tags) == ["coach/v1.0.0", "coach/v1.0.1"]
    assert "coach/1.0.1/peft_ext_manifest.json" in repo.commits[repo.tags["coach/v1.0.1"]].files


def test_item5_a_stalled_hub_ends_in_a_named_timeout_for_push_and_pull(
    fault_proxy: FaultProxy, tmp_path: Path, adapter: MakeAdapter
) -> None:
    store = HfStore(
        endpoint=fault_proxy.url, token=TOKEN, cache_dir=tmp_path / "c", attempts=2, retry_wait_s=0.01, timeout_s=1
    )
    fault_proxy.faults.append(ProxyFault("GET", r"/refs$", kind="stall", delay=3.0, count=2))
    with pytest.raises(RemoteTimeoutError, match="did not answer in time"):
        hub.pull(REPO, "coach", "latest", store=store)
    fault_proxy.faults.append(ProxyFault("GET", r"/revision/main$", kind="stall", delay=3.0, count=2))
    with pytest.raises(RemoteTimeoutError):
        hub.push(adapter(seed=1), REPO, task="coach", store=store)


@pytest.mark.parametrize("situation", ["offline", "down", "5xx"])
def test_item5_an_uncached_exact_version_without_the_hub_is_a_named_error(
    fault_proxy: FaultProxy, tmp_path: Path, adapter: MakeAdapter, monkeypatch: pytest.MonkeyPatch, situation: str
) -> None:
    store = HfStore(endpoint=fault_proxy.url, token=TOKEN, cache_dir=tmp_path / "c", attempts=2, retry_wait_s=0.01)
    hub.push(adapter(seed=1), REPO, task="coach", store=store)
    if situation == "offline":
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    elif situation == "down":  # nothing listens there any more: connection refused
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        store = HfStore(endpoint=f"http://127.0.0.1:{port}", cache_dir=tmp_path / "c", attempts=2, retry_wait_s=0.01)
    else:
        fault_proxy.faults.append(ProxyFault("GET", r"/api/models/", status=503, count=100))
    with pytest.raises(RemoteError) as caught:
        hub.pull(REPO, "coach", "1.0.0", store=store)
    assert {"offline": "offline", "down": "could not reach", "5xx": "HTTP 503"}[situation] in str(caught.value)


def test_item5_latest_with_the_hub_unreachable_fails_instead_of_serving_an_old_version(
    fake_hub: FakeHub, tmp_path: Path, adapter: MakeAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HfStore(endpoint=fake_hub.url, token=TOKEN, cache_dir=tmp_path / "c", attempts=2, retry_wait_s=0.01)
    hub.push(adapter(seed=1), REPO, task="coach", store=store)
    hub.pull(REPO, "coach", "1.0.0", store=store)  # cached
    hub.push(adapter(seed=2), REPO, task="coach", store=store)  # 1.0.1, never pulled here
    fake_hub.faults.append(Fault("GET", r"/refs$", status=503, count=100))
    with pytest.raises(RemoteError, match="HF_HUB_OFFLINE=1"):
        hub.pull(REPO, "coach", "latest", store=store)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # asked for explicitly: the cached list, with a warning
    with pytest.warns(UserWarning, match="local cache"):
        assert hub.resolve(REPO, "coach", "latest", store=store) == hub.SemVer(1, 0, 0)


# -- 6: tokens can leak ---------------------------------------------------------------------------------------------


@pytest.fixture
def echo_hub() -> FakeHub:
    server = FakeHub(token=TOKEN, echo_auth=True)
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def test_item6_the_cli_hands_its_token_to_the_store_which_scrubs_what_a_server_echoes(
    echo_hub: FakeHub,
    tmp_path: Path,
    adapter: MakeAdapter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)  # (DEBUG transport traces print raw response headers, the echo included)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    args = ["--store", "hf", "--endpoint", echo_hub.url, "--cache-dir", str(tmp_path / "c")]
    assert main(["push", str(adapter(seed=1)), REPO, "--task", "coach", *args]) == 0
    capsys.readouterr()
    echo_hub.faults += [Fault("GET", r"/refs$", status=403), Fault("GET", r"/revision/", status=403)]
    for argv in (["versions", REPO, "coach"], ["pull", REPO, "coach", "1.0.0"]):
        code = main([*argv, *args])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.startswith("hub: error: ") and err.count("\n") == 1, err
        assert "HTTP 403" in err and "Authorization: Bearer ***" in err and "Traceback" not in err
    assert TOKEN not in caplog.text


def test_item6_the_revision_resolution_path_is_scrubbed(
    echo_hub: FakeHub, tmp_path: Path, adapter: MakeAdapter
) -> None:
    store = HfStore(endpoint=echo_hub.url, token=TOKEN, cache_dir=tmp_path / "c", attempts=2, retry_wait_s=0.01)
    hub.push(adapter(seed=1), REPO, task="coach", store=store)
    echo_hub.faults.append(Fault("GET", r"/revision/", status=503, count=100))
    with pytest.raises(RemoteError) as caught:
        hub.pull(REPO, "coach", "1.0.0", store=store)
    assert "HTTP 503" in str(caught.value) and TOKEN not in str(caught.value)


def test_item6_credentials_in_the_endpoint_url_are_refused_without_being_shown(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"http://user:{TOKEN}@127.0.0.1:9"
    with pytest.raises(InvalidEndpointError) as caught:
        HfStore(endpoint=url)
    assert TOKEN not in str(caught.value) and "HF_TOKEN" in str(caught.value)
    assert main(["versions", REPO, "coach", "--store", "hf", "--endpoint", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and TOKEN not in err and "credentials" in err


# -- 8: a push killed right after its rename ------------------------------------------------------------------------


def test_item8_a_push_killed_after_its_rename_is_repaired_by_the_retry_and_by_repair_card(
    local_store: LocalStore, adapter: MakeAdapter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = adapter(seed=1)
    hub.push(adapter(seed=0), REPO, task="coach", store=local_store)
    real_rename = os.rename

    def rename_then_die(src: str, dst: str) -> None:
        real_rename(src, dst)
        raise KeyboardInterrupt  # the process is killed right after the commit point

    with monkeypatch.context() as patch:
        patch.setattr(hub.stores.local.os, "rename", rename_then_die)
        with pytest.raises(KeyboardInterrupt):
            hub.push(folder, REPO, task="coach", store=local_store)
    card = local_store.root / REPO / "README.md"
    assert "| coach | 1.0.1 |" not in card.read_text()
    again = hub.push(folder, REPO, task="coach", version="1.0.1", store=local_store)
    assert not again.created and "| coach | 1.0.1 |" in card.read_text()
    card.write_text("stale")
    hub.repair_card(REPO, store=local_store)
    assert "| coach | 1.0.0 |" in card.read_text() and "| coach | 1.0.1 |" in card.read_text()
    card.write_text("stale")
    assert main(["repair-card", REPO, "--root", str(local_store.root)]) == 0
    assert "| coach | 1.0.1 |" in card.read_text()


def test_item8_a_card_left_behind_by_an_interrupted_yank_is_repaired_on_the_hub(
    hf_store: HfStore, fake_hub: FakeHub, adapter: MakeAdapter, tmp_path: Path
) -> None:
    hub.push(adapter(seed=1), REPO, task="coach", store=hf_store)
    fake_hub.faults.append(Fault("POST", r"/commit/", status=500, count=100))
    with pytest.warns(UserWarning, match="repair-card"):
        hub.yank(REPO, "coach", "1.0.0", store=hf_store)
    assert "| yanked |" not in card_of(hf_store, tmp_path)
    fake_hub.faults.clear()
    hub.repair_card(REPO, store=hf_store)
    assert "| yanked |" in card_of(hf_store, tmp_path)


def test_weights_pulled_are_the_weights_pushed(store: Store, adapter: MakeAdapter) -> None:
    """A control for the tests above: the happy path through the same helpers."""
    source = adapter(seed=3)
    hub.push(source, REPO, task="coach", store=store)
    pulled = load_file(str(hub.pull(REPO, "coach", store=store) / WEIGHTS))
    assert (pulled["prompt_embeddings"] == load_file(str(source / WEIGHTS))["prompt_embeddings"]).all()
    assert issubclass(UnexpectedFileError, HubError)
