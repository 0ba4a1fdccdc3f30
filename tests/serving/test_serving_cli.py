"""``peft-ext serve`` and ``peft-ext generate``: registered as ``peft-ext`` commands, one-shot generation through
the service, the server from the command line until interrupted, and user errors as one line."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from serving_testutils import REPO, make_serving_tokenizer, prompt_tensor, save_prompt, words
from tiny_models import make_model

from peft_ext import MultiPromptModel
from peft_ext.serving.cli import main
from peft_ext.serving.server import bind

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["the coach motivate you", "hello world"]


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama (the one the store's prompts were pushed for) and its tokenizer, saved as a model folder."""
    folder = tmp_path_factory.mktemp("cli") / "tiny-llama"
    make_model("llama").save_pretrained(folder)
    make_serving_tokenizer().save_pretrained(folder)
    return folder


def _expected(prompt: torch.Tensor, texts: list[str], max_tokens: int) -> list[list[str]]:
    tokenizer = make_serving_tokenizer()
    served = MultiPromptModel(make_model("llama"), tokenizer)
    served.add("p", prompt)
    out = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        new = served.generate(torch.tensor([ids]), ["p"], max_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
        out.append(words(tokenizer, new[0, len(ids) :].tolist()))
    return out


def test_serve_and_generate_are_peft_ext_commands() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["peft_ext.cli"]
    parser = argparse.ArgumentParser(prog="peft-ext")
    commands = parser.add_subparsers(dest="command")
    for name in ("serve", "generate"):
        module, _, function = declared[name].partition(":")
        getattr(importlib.import_module(module), function)(commands)
    served = parser.parse_args(["serve", "--prompt", "coach=adapters/coach", "--prompt", f"pinned={REPO}:coach@^1"])
    assert served.prompt == [("coach", "adapters/coach"), ("pinned", f"{REPO}:coach@^1")] and callable(served.handler)
    assert (served.host, served.port, served.max_running, served.max_queued) == ("127.0.0.1", 8000, 32, 256)
    generated = parser.parse_args(["generate", "--prompt", "adapters/coach", "hello", "world"])
    assert generated.texts == ["hello", "world"] and generated.temperature == 0.0 and callable(generated.handler)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--prompt", "adapters/coach"])  # NAME=... is required


def test_generate_prints_one_completion_per_text(
    base_folder: Path, tmp_path: Path, store: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = prompt_tensor(7, length=3)
    adapter = save_prompt(tmp_path / "adapter", prompt)
    assert main(["generate", "--base", str(base_folder), "--prompt", str(adapter), "--max-tokens", "6", *TEXTS]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split() for line in printed] == _expected(prompt, TEXTS, 6)

    # A store reference, pulled and checked against the base model (the store's 1.1.0 is prompt_tensor(101, 5)).
    argv = ["generate", "--base", str(base_folder), "--prompt", f"{REPO}:coach@^1.0", "--root", str(store.root)]
    assert main([*argv, "--max-tokens", "4", TEXTS[0]]) == 0
    assert capsys.readouterr().out.split() == _expected(prompt_tensor(101, length=5), TEXTS[:1], 4)[0]


def test_generate_in_bfloat16_answers_as_the_bfloat16_model(
    base_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dtype bfloat16 loads the base in bfloat16: the answers are the bfloat16 model's own greedy tokens (with the
    attention kernel the server uses in half precision), and a float32 run's differ somewhere."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from peft_ext.base_models import load_base_model

    prompt = prompt_tensor(7, length=3)
    adapter = save_prompt(tmp_path / "adapter", prompt)
    argv = ["generate", "--base", str(base_folder), "--prompt", str(adapter), "--max-tokens", "24", *TEXTS]
    assert main([*argv, "--dtype", "bfloat16"]) == 0
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    model, tokenizer, _ = load_base_model(str(base_folder), dtype=torch.bfloat16)  # as the command loads it
    assert model.dtype == torch.bfloat16
    served = MultiPromptModel(model, tokenizer)
    served.add("p", prompt)
    expected = []
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        with sdpa_kernel(SDPBackend.MATH):
            new = served.generate(torch.tensor([ids]), ["p"], max_new_tokens=24, do_sample=False, pad_token_id=0)
        expected.append(words(tokenizer, new[0, len(ids) :].tolist()))
    assert printed == expected and printed != _expected(prompt, TEXTS, 24)


def test_user_errors_are_one_line(base_folder: Path, tmp_path: Path, store: Any, capsys: Any) -> None:
    base = ["--base", str(base_folder)]
    taken = bind("127.0.0.1", 0)
    try:
        for argv, says in (
            (["generate", *base, "--prompt", str(tmp_path / "missing"), "hi"], "missing"),
            (["generate", *base, "--prompt", f"{REPO}:other@^1", "--root", str(store.root), "hi"], "trained on"),
            (["generate", *base, "--prompt", f"{REPO}:coach@^7", "--root", str(store.root), "hi"], "^7"),
            (["generate", "--base", str(tmp_path / "no-model"), "hi"], "No model folder"),
            (["serve", *base, "--port", str(taken.getsockname()[1])], "Cannot listen on 127.0.0.1"),
            (["serve", *base, "--port", "0", "--max-running", "0"], "--max-running"),
            (["serve", *base, "--port", "0", "--api-key", ""], "API key is empty"),
            (["serve", *base, "--port", "0", "--request-timeout", "0"], "--request-timeout"),
        ):
            assert main(argv) == 2, argv
            out, err = capsys.readouterr()
            errors = [line for line in err.splitlines() if "error" in line.lower()]  # (no progress bars)
            assert errors == [err.splitlines()[-1]] and errors[0].startswith("peft-ext: error: ") and says in err, err
            assert "Traceback" not in err and out == ""
            assert str(base_folder.parent) not in err  # a base folder is named, its path never shown
    finally:
        taken.close()


def test_an_exported_empty_api_key_is_refused(base_folder: Path, capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("PEFT_EXT_API_KEY", "")
    assert main(["serve", "--base", str(base_folder), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "API key is empty" in err and "PEFT_EXT_API_KEY" in err


def test_serve_serves_until_interrupted(base_folder: Path, tmp_path: Path) -> None:
    key = "sk-cli-secret-42"
    adapter = save_prompt(tmp_path / "adapter", prompt_tensor(7, length=3))
    command = [sys.executable, "-m", "peft_ext.serving.cli", "serve", "--base", str(base_folder), "--port", "0"]
    process = subprocess.Popen(
        [*command, "--prompt", f"coach={adapter}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PEFT_EXT_API_KEY": key},  # as the README says: not in `ps`
    )
    try:
        first = process.stdout.readline() if process.stdout else ""
        assert first.startswith("peft-ext serve: http://127.0.0.1:"), first + (
            process.stderr.read() if process.stderr else ""
        )
        url = first.split()[2].removesuffix("/v1")
        assert "prompts: coach" in first and "API key required" in first and key not in first
        with httpx.Client(base_url=url, timeout=300) as http:
            assert http.get("/health").json() == {"status": "ok"}
            assert http.post("/v1/completions", json={"model": "coach", "prompt": "hi"}).status_code == 401
            answer = http.post(
                "/v1/completions",
                json={"model": "coach", "prompt": TEXTS[0], "max_tokens": 3, "temperature": 0},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert answer.status_code == 200 and answer.json()["model"] == "coach"
            models = http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).text
            assert '"id":"tiny-llama"' in models and str(base_folder.parent) not in models  # ids, not paths
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err and key not in out + err
