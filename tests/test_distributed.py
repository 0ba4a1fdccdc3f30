"""Data-parallel training: 2 CPU processes (torchrun, gloo, Trainer -> DDP) train the same soft prompt as 1 process.

Same global batch both ways: 4 texts, per-device batch 2 on 2 ranks vs batch 4 on 1 process, so every step's global
batch is the whole dataset and the samplers' orders (which differ with the world size) cannot matter. The texts have
different lengths on purpose: the ranks then hold different token counts and different padding, and the result only
matches if the loss is a mean over all text tokens of the global batch, not a mean of per-rank means.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import train_prompt
from peft import get_peft_model
from tiny_models import make_model

from peft_ext import SoftPromptConfig
from peft_ext.training import train_soft_prompts

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend",
)

TESTS = Path(__file__).resolve().parent
TEXTS = [  # 8, 3, 7 and 8 tokens
    "i want you to act as a coach",
    "be kind always",
    "there are two nice things that should",
    "dream a great dream there hello world quote",
]
SPEC = {"texts": TEXTS, "steps": 5, "learning_rate": 0.1, "num_virtual_tokens": 4, "per_device_batch_size": 2}
TOLERANCE = 1e-5


def _run_two_processes(folder: Path, timeout: float = 240) -> str:
    """torchrun the worker on 2 local processes; ``--standalone`` binds a free port itself (no port race)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(TESTS / "distributed_worker.py"), str(folder)]
    root = str(TESTS.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",  # 2 ranks on 2 cores
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    process = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and the workers it started, all in this new session
        output, _ = process.communicate()
        pytest.fail(f"2-process training did not finish in {timeout} s:\n{output[-4000:]}")
    assert process.returncode == 0, f"torchrun exited with {process.returncode}:\n{output[-4000:]}"
    return output


def _rows(batch: list[list[int]], pad_token_id: int) -> list[tuple[int, ...]]:
    return [tuple(token for token in row if token != pad_token_id) for row in batch]


@pytest.mark.parametrize("placement", ["input", "deep"])
def test_two_processes_train_the_same_prompt_as_one_on_the_same_global_batch(tiny_tokenizer, tmp_path, placement):
    spec = {**SPEC, "placement": placement}
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    (tmp_path / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    _run_two_processes(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    reference = train_prompt(tiny_tokenizer, spec, tmp_path / "one-process", batch_size=4)

    # It really was data parallel: 2 gloo ranks, each step each rank ran 2 of the 4 texts, together all 4 once.
    assert [(r["rank"], r["world_size"], r["backend"]) for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    everything = sorted(tuple(tiny_tokenizer(text)["input_ids"]) for text in TEXTS)
    assert sorted(len(ids) for ids in everything) == [3, 7, 8, 8]  # different lengths, so padding differs
    for outcome in [*ranks, reference]:
        assert outcome["steps"] == SPEC["steps"] and len(outcome["seen"]) == SPEC["steps"]
    pad = tiny_tokenizer.pad_token_id
    for step, (batch0, batch1) in enumerate(zip(ranks[0]["seen"], ranks[1]["seen"], strict=True)):
        assert len(batch0) == len(batch1) == 2, step
        assert sorted(_rows(batch0, pad) + _rows(batch1, pad)) == everything, step
        assert sorted(_rows(reference["seen"][step], pad)) == everything, step

    # DDP kept the replicas identical, and they equal one process on the same global batch.
    torch.testing.assert_close(ranks[0]["prompt"], ranks[1]["prompt"], atol=1e-7, rtol=0)
    torch.testing.assert_close(ranks[0]["initial"], reference["initial"], atol=0, rtol=0)
    moved = (reference["prompt"] - reference["initial"]).abs().max().item()
    assert moved > 1000 * TOLERANCE, moved  # training changed the prompt far beyond the tolerance below
    torch.testing.assert_close(ranks[0]["prompt"], reference["prompt"], atol=TOLERANCE, rtol=0)
    for outcome in ranks:
        assert outcome["losses"] == pytest.approx(reference["losses"], abs=TOLERANCE)


def test_loss_is_the_mean_over_every_text_token_whatever_the_padding(tiny_tokenizer, tmp_path):
    """What makes ranks agree: each row's tokens all count, the first one too, and padding changes nothing.

    The logged loss of the first step (taken before any update) must equal the mean token loss of the 4 texts
    each run alone, unpadded, although the batch pads 3 of them (on the left, as this tokenizer asks).
    """
    assert tiny_tokenizer.padding_side == "left"
    model = get_peft_model(
        make_model("llama"), SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, init_seed=0)
    )
    sums, tokens = 0.0, 0
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([tiny_tokenizer(text)["input_ids"]])
            sums += model(input_ids=ids, labels=ids).loss.item() * ids.shape[1]  # the prompt predicts token 1 too
            tokens += ids.shape[1]
    result = train_soft_prompts(
        model, tiny_tokenizer, TEXTS, tmp_path, max_steps=1, batch_size=4, show_progress=False, use_cpu=True
    )
    assert result.losses[0] == pytest.approx(sums / tokens, abs=TOLERANCE)


def test_a_deep_prompt_s_loss_is_the_mean_over_the_tokens_it_scores(tiny_tokenizer, tmp_path):
    """A deep prompt has no output position before the text, so each row's first token is not scored; the loss's
    divisor leaves it out too, and the first logged loss is the mean over every other token, whatever the padding."""
    config = SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, init_seed=0, placement="deep")
    model = get_peft_model(make_model("llama"), config)
    sums, tokens = 0.0, 0
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([tiny_tokenizer(text)["input_ids"]])
            sums += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    result = train_soft_prompts(
        model, tiny_tokenizer, TEXTS, tmp_path, max_steps=1, batch_size=4, show_progress=False, use_cpu=True
    )
    assert result.losses[0] == pytest.approx(sums / tokens, abs=TOLERANCE)
