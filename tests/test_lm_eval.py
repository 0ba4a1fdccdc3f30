"""``peft-ext eval``: lm-evaluation-harness on soft prompts, in process, offline, on the packaged tasks.

One prompt gives exactly what lm-eval's own ``hf`` model gives with ``peft=`` (every sample's scores and generations);
several prompts, evaluated together in mixed batches, give each prompt's results alone; a store reference gives its
folder's; a prompt for another base, an unknown task, a missing folder or a missing lm-eval are one-line errors.
"""

from __future__ import annotations

import json
import sys
import warnings

import lm_eval
import pytest
import torch
from huggingface_hub import constants as hf_constants
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from peft import get_peft_model
from tiny_models import make_model, make_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

import hub
from hub.stores.local import LocalStore
from peft_ext import SoftPromptConfig, export_prompt_tuning
from peft_ext.base_models import load_base_model
from peft_ext.cli import main
from peft_ext.cli.lm_eval_models import PromptScorer
from peft_ext.cli.tasks import LM_EVAL_AUTHORS, LM_EVAL_TASKS, LM_EVAL_TOPICS, write_lm_eval_tasks

# Words of the packaged tasks' prompts, so that the tiny tokenizer gives the labels and prompts their own ids.
WORDS = ("role", "code", "agent", "Topic", "Said", "by", ":", "Shakespeare", "Bible", "Bacon", "Reagan", "I", "the")
LIMIT, BATCH = 8, 4


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        yield


def _adapter(folder, **config):
    model = get_peft_model(make_model("llama"), SoftPromptConfig(task_type="CAUSAL_LM", **config))
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny base model folder, an input-level and a deep prompt for it, and the packaged tasks for lm-eval."""
    root = tmp_path_factory.mktemp("lm_eval")
    base = root / "base"
    make_model("llama").save_pretrained(base)
    # A full vocabulary: lm-eval's hf model resizes the embeddings to a shorter tokenizer.
    make_tokenizer(WORDS, fill_vocab=True).save_pretrained(base)
    return {
        "root": root,
        "base_model": str(base),
        "input": _adapter(root / "input", num_virtual_tokens=3, init="random", init_seed=1),
        "deep": _adapter(root / "deep", num_virtual_tokens=3, init="random", init_seed=2, placement="deep"),
        "tasks": str(root / "tasks"),
        "written": write_lm_eval_tasks(root / "tasks"),
        "runs": {},
    }


def _ours(work, *prompts, extra=()):
    """``peft-ext eval`` of ``prompts`` on both packaged tasks: {label: lm-eval's results (with samples)}."""
    key = (prompts, tuple(extra))
    if key not in work["runs"]:
        output = work["root"] / f"run{len(work['runs'])}.json"
        arguments = [
            "eval",
            "--model",
            work["base_model"],
            "--include-path",
            work["tasks"],
            "--tasks",
            ",".join(LM_EVAL_TASKS),
        ]
        arguments += ["--limit", str(LIMIT), "--batch-size", str(BATCH), "--output", str(output), "--log-samples"]
        assert main([*arguments, *extra, *(work.get(p, p) for p in prompts)]) == 0
        work["runs"][key] = json.loads(output.read_text())
    return work["runs"][key]


def _reference(work, adapter):
    """lm-eval's own ``hf`` model on the same tasks (``peft=`` for an adapter), as JSON gives it back."""
    model_args = {"pretrained": work["base_model"], "device": "cpu"} | ({"peft": work[adapter]} if adapter else {})
    result = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=list(LM_EVAL_TASKS),
        task_manager=TaskManager(include_path=work["tasks"], include_defaults=False),
        limit=LIMIT,
        batch_size=BATCH,
    )
    return json.loads(json.dumps({key: result[key] for key in ("results", "samples")}, default=str))


def _samples(result, task):
    return [(s["doc_id"], s["arguments"], s["resps"], s["filtered_resps"]) for s in result["samples"][task]]


def _metrics(result, task):
    return {key: value for key, value in result["results"][task].items() if "," in key}


def test_written_tasks_are_lm_eval_tasks_with_train_and_test_splits(work):
    assert work["written"] == [LM_EVAL_TOPICS, LM_EVAL_AUTHORS]
    manager = TaskManager(include_path=work["tasks"], include_defaults=False)
    assert set(LM_EVAL_TASKS) <= set(manager.all_tasks)
    tasks = manager.load(list(LM_EVAL_TASKS))["tasks"]
    topics, authors = tasks[LM_EVAL_TOPICS], tasks[LM_EVAL_AUTHORS]
    assert (len(topics.training_docs()), len(topics.test_docs())) == (180, 448)  # 2 were training rows too
    assert (len(authors.training_docs()), len(authors.test_docs())) == (180, 240)
    assert topics.OUTPUT_TYPE == "multiple_choice" and authors.OUTPUT_TYPE == "generate_until"
    doc = topics.test_docs()[0]
    assert topics.doc_to_text(doc) == doc["text"] + "\nTopic:" and topics.doc_to_choice(doc) == [
        "role",
        "code",
        "agent",
    ]
    # The train split is what `peft-ext train --label-column label --label-prompt Topic:` reads.
    from peft_ext.cli.data import read_labelled

    pairs = read_labelled(f"{work['tasks']}/{LM_EVAL_TOPICS}/train.jsonl", "label")
    assert len(pairs) == 180 and {label for _, label in pairs} == {"role", "code", "agent"}
    held_out = {doc["text"] for doc in topics.test_docs()}
    assert not held_out & {text for text, _ in pairs}


@pytest.mark.parametrize("prompt", ["input", "deep", "base"])
def test_one_prompt_gives_exactly_lm_eval_s_hf_model_with_peft(work, prompt, capsys):
    ours = _ours(work, prompt)
    label = "base" if prompt == "base" else work[prompt]
    assert list(ours["results"]) == [label]
    reference = _reference(work, None if prompt == "base" else prompt)
    for task in LM_EVAL_TASKS:
        assert _samples(ours["results"][label], task) == _samples(reference, task)
        assert _metrics(ours["results"][label], task) == _metrics(reference, task)
    generated = [s["resps"][0][0] for s in reference["samples"][LM_EVAL_AUTHORS]]
    assert all(text.strip() for text in generated)  # the generation task generates


def test_several_prompts_in_mixed_batches_score_as_each_alone(work, capsys, monkeypatch):
    forwards, generations = [], []
    model_call, model_generate = PromptScorer._model_call, HFLM._model_generate

    def forward(self, inps, *args, **kwargs):
        forwards.append(sorted(set(inps[:, 0].tolist())))  # the prompts of the rows (their tags)
        return model_call(self, inps, *args, **kwargs)

    def generate(self, context, *args, **kwargs):
        generations.append((context.shape[0], kwargs.get("adapter_names")))
        return model_generate(self, context, *args, **kwargs)

    monkeypatch.setattr(PromptScorer, "_model_call", forward)
    monkeypatch.setattr(HFLM, "_model_generate", generate)
    together = _ours(work, "base", "input", "deep")
    # Log-likelihoods: the three prompts' rows (a document's one-token choices share one) in one pass of batches of
    # 3 x BATCH rows, prompts sharing batches.
    assert len(forwards) == LIMIT // BATCH and any(len(prompts) > 1 for prompts in forwards)
    # Generations: each batch of BATCH documents generated once, for the three prompts in one batch.
    assert [rows for rows, _ in generations] == [3 * BATCH] * (LIMIT // BATCH)
    assert all(len(set(names)) == 3 for _, names in generations)
    labels = ["base", work["input"], work["deep"]]
    assert list(together["results"]) == labels
    for prompt, label in zip(["base", "input", "deep"], labels, strict=True):
        alone = _ours(work, prompt)["results"][label]
        mixed = together["results"][label]
        for task in LM_EVAL_TASKS:
            assert _metrics(mixed, task) == _metrics(alone, task)
            for (doc, args, resps, _), (doc_alone, args_alone, resps_alone, _) in zip(
                _samples(mixed, task), _samples(alone, task), strict=True
            ):
                assert (doc, args) == (doc_alone, args_alone)
                if task == LM_EVAL_AUTHORS:  # generations: the same tokens
                    assert resps == resps_alone
                else:  # log-likelihoods: the same up to float rounding, the same greedy flags
                    flat = [value for resp in resps for value in resp[0]]
                    flat_alone = [value for resp in resps_alone for value in resp[0]]
                    assert [v for v in flat if isinstance(v, bool)] == [v for v in flat_alone if isinstance(v, bool)]
                    torch.testing.assert_close(
                        torch.tensor([v for v in flat if not isinstance(v, bool)]),
                        torch.tensor([v for v in flat_alone if not isinstance(v, bool)]),
                        atol=1e-5,
                        rtol=0,
                    )
    table = together["table"]
    assert [(row["task"], row["metric"]) for row in table] == [
        (LM_EVAL_TOPICS, "acc"),
        (LM_EVAL_AUTHORS, "exact_match"),
    ]
    assert all(set(row["values"]) == set(labels) for row in table)


def test_a_stock_prompt_tuning_adapter_scores_as_the_soft_prompt_it_was_exported_from(work, capsys):
    # PEFT keeps one adapter type per model: the stock adapter gets its own PeftModel (generating through
    # peft_ext's path), beside the SOFT_PROMPT one.
    stock = work["root"] / "stock"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the export's note on stock generate with transformers 5.24
        export_prompt_tuning(work["input"], stock)
    results = _ours(work, "input", str(stock))["results"]
    for task in LM_EVAL_TASKS:
        assert _samples(results[str(stock)], task) == _samples(results[work["input"]], task)


def test_the_table_is_printed(work, capsys):
    _ours(work, "base", "input", extra=("--write-tasks", str(work["root"] / "again")))
    out = capsys.readouterr().out
    assert f"wrote lm-eval tasks {LM_EVAL_TOPICS}, {LM_EVAL_AUTHORS}" in out
    header, rule, topics, authors = [line for line in out.splitlines() if line.startswith("|")]
    assert [cell.strip() for cell in header.split("|")[1:-1]] == ["task", "metric", "base", work["input"]]
    assert topics.startswith(f"| {LM_EVAL_TOPICS}") and " acc " in topics and " ± " in topics
    assert authors.startswith(f"| {LM_EVAL_AUTHORS}") and "exact_match (first-word)" in authors


def test_a_store_reference_gives_its_folder_s_results(work, capsys):
    base, tokenizer, _ = load_base_model(work["base_model"])
    store = work["root"] / "store"
    hub.push(work["deep"], "me/prompts", task="topics", store=LocalStore(store), base_model=base, tokenizer=tokenizer)
    pulled = _ours(work, "me/prompts:topics@^1", extra=("--store-root", str(store)))
    assert list(pulled["results"]) == ["me/prompts:topics@1.0.0"]
    folder = _ours(work, "deep")["results"][work["deep"]]
    for task in LM_EVAL_TASKS:
        assert _samples(pulled["results"]["me/prompts:topics@1.0.0"], task) == _samples(folder, task)


def _eval_error(work, capsys, *arguments) -> str:
    capsys.readouterr()
    code = main(
        ["eval", "--model", work["base_model"], "--include-path", work["tasks"], "--tasks", LM_EVAL_TOPICS, *arguments]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bar, if it was loaded
    assert code == 2 and err.startswith("peft-ext: error: ") and "Traceback" not in err, err
    return err


def test_a_prompt_for_another_base_is_refused_by_name(work, capsys):
    other = work["root"] / "other-base"  # the same architecture, other weights
    make_model("llama", seed=1).save_pretrained(other)
    make_tokenizer(WORDS, fill_vocab=True).save_pretrained(other)
    base, tokenizer, _ = load_base_model(str(other))
    store = work["root"] / "other-store"
    hub.push(work["input"], "me/prompts", task="other", store=LocalStore(store), base_model=base, tokenizer=tokenizer)
    err = _eval_error(work, capsys, "--store-root", str(store), "me/prompts:other@1.0.0")
    assert "was trained on" in err and "not on the model given" in err
    # A folder made for a model of another width: refused before lm-eval runs.
    torch.manual_seed(0)
    narrow = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    folder = work["root"] / "narrow"
    get_peft_model(narrow, SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)).save_pretrained(folder)
    err = _eval_error(work, capsys, str(folder))
    assert "16 wide but the base model's hidden size is 32" in err


def test_user_errors_are_one_line(work, capsys, monkeypatch):
    err = _eval_error(work, capsys, str(work["root"] / "no-such-adapter"))
    assert "neither an existing folder nor a store reference" in err
    err = _eval_error(work, capsys, "--tasks", "peft_ext_nope", "base")
    assert "Unknown task 'peft_ext_nope'" in err
    err = _eval_error(work, capsys, "--include-path", str(work["root"] / "nowhere"), "base")
    assert "no such folder of task YAMLs" in err
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the extra were not installed
    err = _eval_error(work, capsys, "base")
    assert "pip install 'peft-ext[eval]'" in err


@pytest.mark.slow
def test_a_prompt_trained_on_the_train_split_beats_the_bare_base_on_the_held_out_split(tmp_path, capsys):
    """The embedded default (SmolLM2-135M): 20 steps of `peft-ext train` (a deep prompt, the default recipe) on the
    multiple-choice task's train split, then `peft-ext eval` of it beside the bare base on 60 held-out documents."""
    tasks = tmp_path / "tasks"
    write_lm_eval_tasks(tasks)
    train = [
        "train",
        str(tasks / LM_EVAL_TOPICS / "train.jsonl"),
        "--label-column",
        "label",
        "--label-prompt",
        "Topic:",
    ]
    assert main([*train, "--steps", "20", "--max-length", "48", "--output", str(tmp_path / "run")]) == 0
    adapter, output = str(tmp_path / "run" / "adapter"), tmp_path / "eval.json"
    evaluate = ["eval", "--include-path", str(tasks), "--tasks", LM_EVAL_TOPICS, "--limit", "60"]
    assert main([*evaluate, "--output", str(output), "base", adapter]) == 0
    (row,) = json.loads(output.read_text())["table"]
    base, trained = row["values"]["base"]["value"], row["values"][adapter]["value"]
    assert trained > base + 0.1, (base, trained)  # measured: 0.583 -> 0.883
