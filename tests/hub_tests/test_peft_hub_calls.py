"""PEFT's own Hub calls work for SOFT_PROMPT adapters as for PEFT's PROMPT_TUNING, over real HTTP (issue 2).

The fake Hub (fake_hub_server.py) runs in the test process; a worker subprocess, started with ``HF_ENDPOINT`` pointing
at it, makes the calls with the real huggingface_hub client, transformers and peft. A subprocess is needed because
huggingface_hub reads ``HF_ENDPOINT`` once at import and transformers/peft go through module-level helpers (a shared
``HfApi``, ``hf_hub_download``, ``file_exists``) that keep the import-time endpoint: setting the documented variable
before anything is imported is the faithful way to point them elsewhere. The worker gets a fresh ``HF_HUB_CACHE`` (and
``HF_HOME``), so each file is first downloaded from the server; later loads of the same file at another revision
resolve it with a HEAD and reuse the cached blob, as against the real Hub.

For each method (``soft_prompt`` = ours, ``prompt_tuning`` = PEFT's own, the control), the worker:

1. builds a two-adapter model (``default`` + ``second``) and ``push_to_hub``-es it: ``default`` at the repo root,
   ``second`` in the subfolder ``second/`` (PeftModel.save_pretrained's layout); tags that commit ``v1``;
2. pushes a different adapter with ``push_to_hub(revision="dev")`` (a new branch);
3. pushes another adapter to ``main`` (so ``main`` and ``v1`` differ) and adds a third one in the subfolder ``third/``
   with ``save_pretrained`` + ``HfApi.upload_folder``;
4. loads them back into fresh base models with ``PeftConfig.from_pretrained``, ``PeftModel.from_pretrained``,
   ``load_adapter(..., adapter_name=, subfolder=)``, ``AutoPeftModelForCausalLM.from_pretrained`` and ``revision=``
   (branch, tag, commit sha), recording the logits (or the error) of every step.

The tests compare each step's logits with the pushed model's, bit for bit, and check what landed on the server.
Run as a script (``python test_peft_hub_calls.py OUT``) this file is the worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fake_hub_server import FakeHub
from hub_testutils import TOKEN

TESTS = Path(__file__).resolve().parents[1]
METHODS = ("soft_prompt", "prompt_tuning")
INPUT_IDS = [[2, 5, 9, 12, 7, 3]]

# step name -> which pushed adapter's logits it must reproduce
LOADS = {
    "from_pretrained": "latest",
    "load_adapter_subfolder": "second",
    "load_adapter_upload_folder": "third",
    "auto_peft_model": "latest",
    "revision_branch": "dev",
    "revision_tag": "default",
    "revision_sha": "default",
    "load_adapter_revision": "dev",
    "load_adapter_subfolder_revision": "second",
}


def repo_id(method: str) -> str:
    return f"peft-ext/{method.replace('_', '-')}"


# ---- the worker (runs in the subprocess) -----------------------------------------------------------------------------


def worker(out: Path) -> None:
    # Everything Hub-related is imported here, in the subprocess, with HF_ENDPOINT already in the environment.
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(TESTS))
    from tiny_models import make_model  # tests/tiny_models.py

    import peft_ext  # noqa: F401  (registers SOFT_PROMPT with PEFT)

    assert os.environ["HF_ENDPOINT"].startswith("http://127.0.0.1:")

    base_dir = out / "base"
    make_model("llama", seed=0).save_pretrained(base_dir)  # a local base, so that AutoPeftModel can load it

    def base() -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(base_dir).eval()

    torch.save({method: exercise(method, base, out / method) for method in METHODS}, out / "results.pt")


def exercise(method: str, base: Callable[[], torch.nn.Module], out: Path) -> dict[str, Any]:
    """Push and load one method's adapters; returns reference and loaded logits, configs and each step's error."""
    from huggingface_hub import HfApi
    from peft import AutoPeftModelForCausalLM, PeftConfig, PeftModel, PromptTuningConfig, get_peft_model

    from peft_ext import SoftPromptConfig

    api = HfApi()  # default endpoint and token: HF_ENDPOINT and HF_TOKEN
    repo = repo_id(method)
    ids = torch.tensor(INPUT_IDS)
    res: dict[str, Any] = {"errors": {}, "logits": {}, "configs": {}}

    def config(seed: int) -> Any:
        if method == "soft_prompt":
            return SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, init_seed=seed)
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)  # random init from torch's seed

    def make(seed: int) -> Any:
        torch.manual_seed(seed)
        return get_peft_model(base(), config(seed))

    def logits(model: Any, adapter: str | None = None) -> torch.Tensor:
        if adapter is not None:
            model.set_adapter(adapter)
        model.eval()
        with torch.no_grad():
            return model(input_ids=ids).logits

    def step(name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:  # recorded, so that each test reports its own step
            res["errors"][name] = traceback.format_exc()
            return None

    def load(name: str, fn: Callable[[], Any], adapter: str | None = None) -> None:
        model = step(name, fn)
        if model is not None:
            res["logits"][name] = logits(model, adapter)

    # 1. a two-adapter model, pushed with push_to_hub: "default" at the root, "second" under second/; tagged v1
    model = make(1)
    torch.manual_seed(2)
    model.add_adapter("second", config(2))
    res["logits"]["ref:default"] = logits(model, "default")
    res["logits"]["ref:second"] = logits(model, "second")
    model.set_adapter("default")
    pushed = step("push_to_hub", lambda: model.push_to_hub(repo, commit_message="v1"))
    if pushed is None:
        return res
    res["v1_oid"] = pushed.oid
    step("create_tag", lambda: api.create_tag(repo, tag="v1", revision=pushed.oid))

    # 2. another adapter pushed to a new branch
    dev = make(3)
    res["logits"]["ref:dev"] = logits(dev)
    step("push_to_hub_branch", lambda: dev.push_to_hub(repo, revision="dev"))

    # 3. a new root adapter on main (so main differs from the tag v1) ...
    latest = make(5)
    res["logits"]["ref:latest"] = logits(latest)
    step("push_to_hub_again", lambda: latest.push_to_hub(repo, commit_message="v2"))

    # ... and a third adapter in a subfolder, with save_pretrained + upload_folder
    third = make(4)
    res["logits"]["ref:third"] = logits(third)
    third.save_pretrained(out / "third")
    step("upload_folder", lambda: api.upload_folder(repo_id=repo, folder_path=out / "third", path_in_repo="third"))

    # 4. loads, each into a fresh base model
    for name, kwargs in {"root": {}, "subfolder": {"subfolder": "second"}, "branch": {"revision": "dev"}}.items():
        cfg = step(f"config_{name}", lambda kwargs=kwargs: PeftConfig.from_pretrained(repo, **kwargs))
        if cfg is not None:
            peft_type = getattr(cfg.peft_type, "value", cfg.peft_type)
            res["configs"][name] = {"class": type(cfg).__name__, "peft_type": peft_type, "n": cfg.num_virtual_tokens}

    loaded = step("from_pretrained", lambda: PeftModel.from_pretrained(base(), repo))
    if loaded is not None:
        res["logits"]["from_pretrained"] = logits(loaded)

        def add(**kwargs: Any) -> Any:
            loaded.load_adapter(repo, **kwargs)
            return loaded

        load("load_adapter_subfolder", lambda: add(adapter_name="second", subfolder="second"), "second")
        load("load_adapter_upload_folder", lambda: add(adapter_name="third", subfolder="third"), "third")
        load("load_adapter_revision", lambda: add(adapter_name="dev", revision="dev"), "dev")
    load("auto_peft_model", lambda: AutoPeftModelForCausalLM.from_pretrained(repo))
    load("revision_branch", lambda: PeftModel.from_pretrained(base(), repo, revision="dev"))
    load("revision_sha", lambda: PeftModel.from_pretrained(base(), repo, revision=pushed.oid))
    load("revision_tag", lambda: PeftModel.from_pretrained(base(), repo, revision="v1"))

    def subfolder_at_revision() -> Any:
        m = PeftModel.from_pretrained(base(), repo, revision="v1")
        m.load_adapter(repo, adapter_name="second", subfolder="second", revision="v1")
        return m

    load("load_adapter_subfolder_revision", subfolder_at_revision, "second")
    if method == "soft_prompt":  # peft_ext resumes training from a saved soft prompt; PEFT refuses its own
        load("trainable_revision", lambda: PeftModel.from_pretrained(base(), repo, revision="dev", is_trainable=True))
    return res


# ---- the tests (run in pytest) ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, Any]]]:
    server = FakeHub(token=TOKEN)
    url = server.start()
    out = tmp_path_factory.mktemp("peft_hub_calls")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(
        HF_ENDPOINT=url,
        HF_TOKEN=TOKEN,
        HF_HOME=str(out / "hf_home"),
        HF_HUB_CACHE=str(out / "hf_cache"),
        HF_HUB_DISABLE_XET="1",  # the fake server speaks plain HTTP, never Xet
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, f"worker failed:\n{proc.stdout}\n{proc.stderr}"
        yield server, torch.load(out / "results.pt")
    finally:
        server.stop()


def _result(hub_run: tuple[Any, dict[str, Any]], method: str, step: str) -> dict[str, Any]:
    res = hub_run[1][method]
    assert step not in res["errors"], f"{method}: {step} failed:\n{res['errors'][step]}"
    return res


def _files(server: Any, method: str, rev: str = "main") -> dict[str, bytes]:
    repo = server.repos[repo_id(method)]
    return repo.commits[repo.resolve(rev)].files


@pytest.mark.parametrize("method", METHODS)
def test_push_to_hub_uploads_the_adapters(hub_run: tuple[Any, dict[str, Any]], method: str) -> None:
    server, _ = hub_run
    for step in ("push_to_hub", "create_tag", "push_to_hub_branch", "push_to_hub_again", "upload_folder"):
        _result(hub_run, method, step)
    adapter_files = {"adapter_config.json", "adapter_model.safetensors"}
    v1 = _files(server, method, "v1")
    assert set(v1) == {".gitattributes", "README.md", *adapter_files, *(f"second/{f}" for f in adapter_files)}
    main = _files(server, method)
    assert set(main) == set(v1) | {f"third/{f}" for f in (*adapter_files, "README.md")}  # save_pretrained's card
    assert main["adapter_model.safetensors"] != v1["adapter_model.safetensors"]  # pushed again since the tag
    assert main["second/adapter_model.safetensors"] == v1["second/adapter_model.safetensors"]
    dev = _files(server, method, "dev")  # branched from main at v1, then the root adapter replaced
    assert set(dev) == set(v1)
    assert dev["second/adapter_model.safetensors"] == v1["second/adapter_model.safetensors"]
    assert dev["adapter_model.safetensors"] != v1["adapter_model.safetensors"]
    peft_type = {"soft_prompt": "SOFT_PROMPT", "prompt_tuning": "PROMPT_TUNING"}[method]
    for folder in ("", "second/", "third/"):
        saved = json.loads(main[f"{folder}adapter_config.json"])
        assert saved["peft_type"] == peft_type
        assert saved["num_virtual_tokens"] == 4
    assert b"\n---" in v1["README.md"] or v1["README.md"].startswith(b"---")  # a card with YAML metadata
    # peft_ext keeps PEFT's own card for soft prompts; PEFT's methods keep transformers' behaviour (its template).
    library = {"soft_prompt": b"library_name: peft", "prompt_tuning": b"library_name: transformers"}[method]
    assert library in v1["README.md"]
    commit_oid = hub_run[1][method]["v1_oid"]
    assert server.repos[repo_id(method)].tags["v1"] == commit_oid


@pytest.mark.parametrize("method", METHODS)
def test_peft_config_from_pretrained(hub_run: tuple[Any, dict[str, Any]], method: str) -> None:
    expected_class = {"soft_prompt": "SoftPromptConfig", "prompt_tuning": "PromptTuningConfig"}[method]
    peft_type = {"soft_prompt": "SOFT_PROMPT", "prompt_tuning": "PROMPT_TUNING"}[method]
    for name in ("root", "subfolder", "branch"):
        configs = _result(hub_run, method, f"config_{name}")["configs"]
        assert configs[name] == {"class": expected_class, "peft_type": peft_type, "n": 4}


@pytest.mark.parametrize("step", sorted(LOADS))
@pytest.mark.parametrize("method", METHODS)
def test_load_from_hub_gives_identical_logits(hub_run: tuple[Any, dict[str, Any]], method: str, step: str) -> None:
    res = _result(hub_run, method, step)
    expected = res["logits"][f"ref:{LOADS[step]}"]
    got = res["logits"][step]
    assert got.shape == expected.shape == (1, 4 + len(INPUT_IDS[0]), 64)
    assert torch.equal(got, expected), f"{method} {step}: max diff {(got - expected).abs().max()}"


def test_references_differ(hub_run: tuple[Any, dict[str, Any]]) -> None:
    """The adapters pushed are distinguishable, so the logit checks above can tell a wrong load."""
    for method in METHODS:
        refs = [v for k, v in hub_run[1][method]["logits"].items() if k.startswith("ref:")]
        assert len(refs) == 5
        assert all(not torch.equal(a, b) for i, a in enumerate(refs) for b in refs[i + 1 :])


def test_soft_prompt_loads_trainable_from_a_revision(hub_run: tuple[Any, dict[str, Any]]) -> None:
    res = _result(hub_run, "soft_prompt", "trainable_revision")
    assert torch.equal(res["logits"]["trainable_revision"], res["logits"]["ref:dev"])


def test_every_download_went_to_the_server(hub_run: tuple[Any, dict[str, Any]]) -> None:
    server, _ = hub_run
    resolved = {path for method, path in server.requests if method == "GET" and "/resolve/" in path}
    for method in METHODS:
        for folder in ("", "second/", "third/"):
            assert any(
                p.startswith(f"/{repo_id(method)}/resolve/") and p.endswith(f"/{folder}adapter_model.safetensors")
                for p in resolved
            )


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
