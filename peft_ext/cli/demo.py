"""``peft-ext demo``: the job this project grew from, end to end, on the embedded default model.

Two soft prompts on one frozen base model - one trained on a dataset of prompts ("I want you to act as ..."), one on
motivational quotes - with fixed-text init, trained in one mixed-batch run, compared before and after on the seed's
two inputs, pushed to the local store as 1.0.0, pulled back by constraint with their base model verified, and served
side by side from one ``MultiPromptModel`` in a single mixed batch. An application, like the rest of
``peft_ext.cli``: it uses both the library and ``hub``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

SEED_INPUTS = {
    "prompts": "I want you to act as a motivational coach.",
    "quotes": "There are two nice things that should matter to you:",
}
INIT_TEXTS = {
    "prompts": "Write a prompt that tells an AI assistant which role to play:",
    "quotes": "Share an inspiring, motivational quote:",
}
HELD_OUT = 16
GENERATION: dict[str, Any] = {"max_new_tokens": 28, "do_sample": False, "repetition_penalty": 1.3}


@dataclass
class Stages:
    """Wall-clock seconds of each stage, printed as they finish."""

    seconds: dict[str, float]

    def run(self, name: str, work: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = work()
        self.seconds[name] = time.perf_counter() - start
        print(f"[{self.seconds[name]:6.1f}s] {name}", flush=True)
        return result


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "demo", help="Train two soft prompts on one frozen base, compare, share and serve them side by side."
    )
    parser.add_argument("--model", help="Base model (default: the embedded SmolLM2-135M-Instruct).")
    parser.add_argument("--steps", type=int, default=40, help="Training steps of the mixed-batch run (default 40).")
    parser.add_argument("--train-texts", type=int, default=160, help="Training texts per prompt (default 160).")
    parser.add_argument("--output", help="Output folder (default: peft-ext-output/demo-<time>).")
    parser.add_argument("--store-root", help="Local store folder (default: <output>/store).")
    parser.set_defaults(handler=run)


def _heldout_losses(model: Any, tokenizer: Any, data: dict[str, list[str]], adapters: list[str | None]) -> dict:
    """Mean token loss of every adapter (None: the bare base) on every task's held-out texts."""
    import torch

    losses: dict[str, dict[str, float]] = {}
    model.eval()
    for adapter in adapters:
        row = losses.setdefault(adapter or "base model", {})
        for task, texts in data.items():
            batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=48)
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            with torch.no_grad():
                output = model(**batch, labels=labels, adapter_names=[adapter] * len(texts))
            row[task] = float(output.loss)
    return losses


def _answers(model: Any, tokenizer: Any, adapters: list[str | None]) -> dict[str, dict[str, str]]:
    """Each adapter's answer to each seed input, all in one mixed batch."""
    rows = [(adapter, task) for adapter in adapters for task in SEED_INPUTS]
    tokenizer.padding_side = "left"
    batch = tokenizer([SEED_INPUTS[task] for _, task in rows], return_tensors="pt", padding=True)
    output = model.generate(**batch, adapter_names=[adapter for adapter, _ in rows], **GENERATION)
    texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    answers: dict[str, dict[str, str]] = {}
    for (adapter, task), text in zip(rows, texts, strict=True):
        answers.setdefault(adapter or "base model", {})[task] = " ".join(text.split())
    return answers


def _print_answers(before: dict, after: dict) -> None:
    for task, text in SEED_INPUTS.items():
        print(f"\n  Input: {text!r}")
        for adapter in after:
            print(f"    {adapter:>14} before: {before[adapter][task][:100]!r}")
            if adapter != "base model":
                print(f"    {'':>14}  after: {after[adapter][task][:100]!r}")


def _print_losses(before: dict, after: dict) -> None:
    tasks = list(SEED_INPUTS)
    print("\n  Held-out loss (lower = closer to that data), before -> after training:")
    print(f"    {'':>14} " + " ".join(f"{task + ' data':>22}" for task in tasks))
    for adapter in after:
        cells = [f"{before[adapter][t]:9.3f} -> {after[adapter][t]:6.3f}" for t in tasks]
        print(f"    {adapter:>14} " + " ".join(f"{c:>22}" for c in cells))


def run(args: argparse.Namespace) -> int:
    import torch  # the demo's heavy work starts here; registering the command (``--help``) stays instant
    from peft import get_peft_model

    from hub import api
    from hub.stores.local import LocalStore

    from .. import MultiPromptModel, SoftPromptConfig
    from ..base_models import load_base_model
    from ..training import train_soft_prompts
    from .data import packaged_prompts, packaged_quotes
    from .plots import plot_before_after, plot_losses
    from .train import DEFAULT_LR, DEFAULT_PLACEMENT

    started = time.perf_counter()
    output = args.output or os.path.join("peft-ext-output", time.strftime("demo-%Y%m%d-%H%M%S"))
    os.makedirs(output, exist_ok=True)
    store = LocalStore(args.store_root or os.path.join(output, "store"))
    stages = Stages({})

    base, tokenizer, info = stages.run("load the base model", lambda: load_base_model(args.model))
    texts = {"prompts": packaged_prompts(), "quotes": packaged_quotes(args.train_texts + HELD_OUT)}
    generator = torch.Generator().manual_seed(0)
    texts = {task: [t[i] for i in torch.randperm(len(t), generator=generator).tolist()] for task, t in texts.items()}
    held_out = {task: t[:HELD_OUT] for task, t in texts.items()}
    train = {task: t[HELD_OUT : HELD_OUT + args.train_texts] for task, t in texts.items()}
    print(f"data: {', '.join(f'{len(t)} {task}' for task, t in train.items())} training texts (from PyPI wheels)")

    # Fixed-text init, as the seed article suggests instead of random vectors, placed as `peft-ext train` places a
    # prompt by default (the best measured); one adapter per task on one base.
    configs = {
        task: SoftPromptConfig(
            task_type="CAUSAL_LM",
            init="text",
            init_text=text,
            tokenizer=tokenizer,
            text_length_policy="exact",
            placement=DEFAULT_PLACEMENT,
        )
        for task, text in INIT_TEXTS.items()
    }
    first, *others = configs
    model = get_peft_model(base, configs[first], adapter_name=first)
    for task in others:
        model.add_adapter(task, configs[task])
    adapters: list[str | None] = [None, *INIT_TEXTS]

    answers_before = stages.run("answer the seed inputs (before)", lambda: _answers(model, tokenizer, adapters))
    losses_before = stages.run(
        "held-out losses (before)", lambda: _heldout_losses(model, tokenizer, held_out, adapters)
    )
    result = stages.run(
        "train both prompts in one mixed-batch run",
        lambda: train_soft_prompts(
            model,
            tokenizer,
            train,
            os.path.join(output, "trainer"),
            max_steps=args.steps,
            batch_size=8,
            learning_rate=DEFAULT_LR[DEFAULT_PLACEMENT],
            max_length=48,
        ),
    )
    answers_after = stages.run("answer the seed inputs (after)", lambda: _answers(model, tokenizer, adapters))
    losses_after = stages.run("held-out losses (after)", lambda: _heldout_losses(model, tokenizer, held_out, adapters))
    _print_answers(answers_before, answers_after)
    _print_losses(losses_before, losses_after)

    def share() -> dict[str, str]:
        pulled = {}
        for task in INIT_TEXTS:
            folder = os.path.join(output, "adapters", task)
            model.save_pretrained(os.path.join(output, "adapters"), selected_adapters=[task])
            metrics = {f"heldout_loss_{t}": v for t, v in losses_after[task].items()}
            api.push(
                folder,
                "demo/seed-prompts",
                task=task,
                version="1.0.0",
                store=store,
                base_model=base,
                tokenizer=tokenizer,
                metrics=metrics,
            )
            pulled[task] = str(
                api.pull("demo/seed-prompts", task, "^1.0", base_model=base, tokenizer=tokenizer, store=store)
            )
        return pulled

    pulled = stages.run("push both as 1.0.0, pull back by ^1.0 (base verified)", share)

    def serve() -> list[str]:
        server = MultiPromptModel(base, tokenizer)
        for task, folder in pulled.items():
            server.add(task, folder)
        rows = ["prompts", "quotes", None]
        inputs = [SEED_INPUTS["prompts"], SEED_INPUTS["quotes"], SEED_INPUTS["quotes"]]
        answers = server.generate(inputs, rows, **GENERATION)
        for name, text, answer in zip(rows, inputs, answers, strict=True):
            print(f"    [{name or 'base model'}] {text} -> {' '.join(answer.split())[:90]!r}")
        return answers

    print("\n  Serving both pulled prompts and the bare base model in one mixed batch:")
    served = stages.run("serve both from one MultiPromptModel", serve)
    plot = plot_losses({"both prompts (mixed batches)": result.losses}, os.path.join(output, "loss.png"))
    heldout_plot = plot_before_after(losses_before, losses_after, os.path.join(output, "heldout_loss.png"))
    total = time.perf_counter() - started
    summary = {
        "base_model": info.to_dict(),
        "training": {"steps": result.steps, "losses": result.losses, "texts": {t: len(v) for t, v in train.items()}},
        "answers": {"before": answers_before, "after": answers_after, "served": served},
        "heldout_loss": {"before": losses_before, "after": losses_after},
        "store": {"root": str(store.root), "pulled": pulled},
        "seconds": {**stages.seconds, "total": total},
        "plots": {"training_loss": plot, "heldout_loss": heldout_plot},
    }
    with open(os.path.join(output, "summary.json"), "w", encoding="utf-8") as file:
        json.dump(summary, file, indent=2)
    print(
        f"\nDone in {total:.0f}s. Artefacts (adapters, store, loss.png, heldout_loss.png, summary.json) in "
        f"{os.path.abspath(output)}"
    )
    return 0
