"""lm-evaluation-harness against ``peft-ext serve``: its ``local-completions`` model, with its remote tokenizer (no
local copy), runs the packaged multiple-choice and generation tasks to the end for the base model, an input-level
prompt by name and a deep prompt by store reference, and every sample's scores and generations are those of lm-eval's
own ``hf`` model in process (``peft=`` the same adapter folder). Offline: the tasks are local JSON files.

Loglikelihoods are compared to 1e-4: the server scores each request alone at its prefill, lm-eval's ``hf`` model in
padded batches, so they agree to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lm_eval
import pytest
from huggingface_hub import constants as hf_constants
from lm_eval.tasks import TaskManager
from peft import get_peft_model
from serving_testutils import running
from tiny_models import make_model, make_tokenizer

import hub
from peft_ext import SoftPromptConfig
from peft_ext.cli.tasks import LM_EVAL_AUTHORS, LM_EVAL_TASKS, LM_EVAL_TOPICS, write_lm_eval_tasks
from peft_ext.serving.server import Server
from peft_ext.serving.service import Service

WORDS = ("role", "code", "agent", "Topic", "Said", "by", ":", "Shakespeare", "Bible", "Bacon", "Reagan", "I", "the")
LIMIT, BATCH = 8, 4
REPO, TASK = "org/evals", "deep"
TOLERANCE = 1e-4


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        yield


def _adapter(folder: Path, **config: Any) -> str:
    get_peft_model(make_model("llama"), SoftPromptConfig(task_type="CAUSAL_LM", **config)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lm_eval_server")
    tokenizer = make_tokenizer(WORDS, fill_vocab=True)
    make_model("llama").save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    deep = _adapter(root / "deep", num_virtual_tokens=3, init="random", init_seed=2, placement="deep")
    store = hub.LocalStore(root / "store")
    hub.push(deep, REPO, task=TASK, store=store, base_model=make_model("llama"), tokenizer=tokenizer)
    return {
        "root": root,
        "base": str(root / "base"),
        "input": _adapter(root / "input", num_virtual_tokens=3, init="random", init_seed=1),
        "deep": deep,
        "store": store,
        "tasks": str(root / "tasks"),
        "written": write_lm_eval_tasks(root / "tasks"),
    }


@pytest.fixture(scope="module")
def server(work: dict[str, Any]) -> Iterator[Server]:
    service = Service(
        make_model("llama"), make_tokenizer(WORDS, fill_vocab=True), base_name="tiny", store=work["store"]
    )
    service.add("input", work["input"])
    with running(service) as server:
        yield server


def _evaluate(work: dict[str, Any], model: str, model_args: dict[str, Any]) -> dict[str, Any]:
    result = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=list(LM_EVAL_TASKS),
        task_manager=TaskManager(include_path=work["tasks"], include_defaults=False),
        limit=LIMIT,
        batch_size=BATCH,
        log_samples=True,
    )
    assert result is not None
    return dict(json.loads(json.dumps({key: result[key] for key in ("results", "samples")}, default=str)))


@pytest.mark.parametrize(
    ("served", "adapter"), [("tiny", None), ("input", "input"), (f"{REPO}:{TASK}@^1", "deep")], ids=str
)
def test_local_completions_against_the_server_score_as_lm_eval_in_process(
    work: dict[str, Any], server: Server, served: str, adapter: str | None
) -> None:
    remote = _evaluate(
        work,
        "local-completions",
        {
            "base_url": f"{server.url}/v1/completions",
            "model": served,
            "tokenizer_backend": "remote",
            "tokenized_requests": True,
            "num_concurrent": 2,
            "max_retries": 1,
        },
    )
    in_process = _evaluate(
        work, "hf", {"pretrained": work["base"], "device": "cpu"} | ({"peft": work[adapter]} if adapter else {})
    )
    choices = remote["samples"][LM_EVAL_TOPICS]
    assert len(choices) == LIMIT and len(remote["samples"][LM_EVAL_AUTHORS]) == LIMIT
    for got, want in zip(choices, in_process["samples"][LM_EVAL_TOPICS], strict=True):
        assert got["doc_id"] == want["doc_id"] and got["arguments"] == want["arguments"]
        for (got_ll, got_greedy), (want_ll, want_greedy) in zip(
            got["filtered_resps"], want["filtered_resps"], strict=True
        ):
            assert abs(float(got_ll) - float(want_ll)) < TOLERANCE and got_greedy == want_greedy
        assert got["acc"] == want["acc"]
    for got, want in zip(remote["samples"][LM_EVAL_AUTHORS], in_process["samples"][LM_EVAL_AUTHORS], strict=True):
        # The server's text continues the prompt's (the tiny word-level tokenizer puts a space between words);
        # lm-eval's hf model decodes the new tokens alone.
        assert got["resps"][0][0].strip() == want["resps"][0][0].strip() and got["doc_id"] == want["doc_id"]
        assert got["filtered_resps"] == want["filtered_resps"]
        assert got["exact_match"] == want["exact_match"]
    generated = [s["resps"][0][0] for s in remote["samples"][LM_EVAL_AUTHORS]]
    assert all(text.strip() for text in generated)  # the generation task generates
    for task in LM_EVAL_TASKS:
        assert remote["results"][task].keys() == in_process["results"][task].keys()
