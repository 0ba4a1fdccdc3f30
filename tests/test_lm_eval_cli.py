"""lm-eval's own command line (``lm_eval --model hf --model_args pretrained=...,peft=...``) in a fresh interpreter that
never imports peft_ext reads a SOFT_PROMPT adapter: the startup hook that installing peft-ext adds registers it. With
the hook turned off (``PEFT_EXT_AUTOLOAD=0``) the same command fails on the unknown adapter type."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from peft import get_peft_model
from tiny_models import make_model, make_tokenizer

from peft_ext import SoftPromptConfig
from peft_ext.cli import main
from peft_ext.cli.tasks import LM_EVAL_TOPICS, write_lm_eval_tasks

WORDS = ("role", "code", "agent", "Topic", "I", "the")
LIMIT = 6


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("lm_eval_cli")
    make_model("llama").save_pretrained(root / "base")
    make_tokenizer(WORDS, fill_vocab=True).save_pretrained(root / "base")
    config = SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, init="random", init_seed=5, placement="deep")
    get_peft_model(make_model("llama"), config).save_pretrained(root / "deep")
    write_lm_eval_tasks(root / "tasks")
    return {"root": str(root), "base": str(root / "base"), "deep": str(root / "deep"), "tasks": str(root / "tasks")}


def lm_eval_cli(work: dict[str, str], output: str, **env: str) -> subprocess.CompletedProcess[str]:
    arguments = [
        *("--model", "hf", "--model_args", f"pretrained={work['base']},peft={work['deep']}", "--device", "cpu"),
        *("--tasks", LM_EVAL_TOPICS, "--include_path", work["tasks"], "--limit", str(LIMIT), "--batch_size", "2"),
        *("--output_path", output),
    ]
    check = "import sys; from lm_eval.__main__ import cli_evaluate; sys.argv = ['lm_eval', *sys.argv[1:]]; "
    check += "cli_evaluate(); assert 'peft_ext.integration' in sys.modules"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **env}
    return subprocess.run(
        [sys.executable, "-c", check, *arguments], capture_output=True, text=True, env=environment, timeout=600
    )


def results(folder: Path) -> dict[str, float]:
    (found,) = folder.rglob("results_*.json")
    return dict(json.loads(found.read_text())["results"][LM_EVAL_TOPICS])


def test_lm_eval_s_command_line_reads_a_soft_prompt_through_the_startup_hook(
    work: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    done = lm_eval_cli(work, f"{work['root']}/hooked")
    assert done.returncode == 0, done.stderr[-3000:]
    hooked = results(Path(work["root"]) / "hooked")
    output = f"{work['root']}/ours.json"
    assert (
        main(
            ["eval", "--model", work["base"], "--include-path", work["tasks"], "--tasks", LM_EVAL_TOPICS]
            + ["--limit", str(LIMIT), "--batch-size", "2", "--output", output, work["deep"]]
        )
        == 0
    )
    ours = json.loads(Path(output).read_text())["results"][work["deep"]]["results"][LM_EVAL_TOPICS]
    assert hooked["acc,none"] == ours["acc,none"]


def test_without_the_hook_lm_eval_cannot_read_a_soft_prompt(work: dict[str, str]) -> None:
    done = lm_eval_cli(work, f"{work['root']}/unhooked", PEFT_EXT_AUTOLOAD="0")
    assert done.returncode != 0 and "SOFT_PROMPT" in done.stderr
