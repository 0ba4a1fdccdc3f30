"""Every script in examples/ runs end to end (its ``main``), on a tiny Llama saved to a folder, with 2 steps."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import make_model

from hub import LocalStore, versions

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    """Import ``examples/<name>.py`` by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_model_folder(tmp_path, tiny_tokenizer) -> str:
    """A tiny Llama and its tokenizer saved as a local model folder, which ``load_base_model`` loads like any other."""
    folder = tmp_path / "tiny-llama"
    make_model("llama").save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return str(folder)


def _run(name: str, folder: str, output: Path, *extra: str) -> None:
    assert _load(name).main(["--model", folder, "--steps", "2", "--output", str(output), *extra]) == 0


def test_every_example_has_a_test():
    tested = {"seed_reproduction", "plain_peft", "share_and_pin", "mixed_serving"}
    assert {path.stem for path in EXAMPLES.glob("*.py")} == tested


def test_seed_reproduction(tiny_model_folder, tmp_path, capsys):
    _run("seed_reproduction", tiny_model_folder, tmp_path / "out")
    printed = capsys.readouterr().out
    assert "trained 2 steps" in printed and "Served side by side" in printed
    for name in ("prompts", "quotes"):
        assert (tmp_path / "out" / name / "adapter_model.safetensors").is_file()


def test_plain_peft(tiny_model_folder, tmp_path, capsys):
    _run("plain_peft", tiny_model_folder, tmp_path / "out")
    printed = capsys.readouterr().out
    assert "[coach]" in printed and "[quotes]" in printed and "[base model]" in printed
    difference = float(printed.split("max logit difference ")[1].split()[0])
    assert difference < 1e-4
    for name in ("coach", "quotes", "coach-stock"):
        assert (tmp_path / "out" / name / "adapter_config.json").is_file()


def test_share_and_pin(tiny_model_folder, tmp_path, capsys):
    store_root = tmp_path / "store"
    _run("share_and_pin", tiny_model_folder, tmp_path / "out", "--store-root", str(store_root))
    printed = capsys.readouterr().out
    assert "^1.0 resolves to 1.1.0" in printed and "BaseModelMismatchError" in printed
    assert "after yanking 1.1.0, ^1.0 resolves to 1.0.0" in printed
    listed = versions("my-org/soft-prompts", "quotes", store=LocalStore(store_root))
    assert [(str(e.version), e.yanked) for e in listed] == [("1.0.0", False), ("1.1.0", True)]


def test_mixed_serving(tiny_model_folder, tmp_path, capsys):
    _run("mixed_serving", tiny_model_folder, tmp_path / "out")
    printed = capsys.readouterr().out
    assert "each row identical to the same request alone: True" in printed
    assert "KVCacheStats(entries=3," in printed
    assert "after a request for 'coach': loaded ['coach']" in printed
