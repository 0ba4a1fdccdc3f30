"""Share a soft prompt through the hub and pin it: versions, constraints, base-model checks and yanking.

A soft prompt only makes sense on the base model it was trained on, so every pushed version records that model
(id, exact revision or wheel version and file hash, embedding and tokenizer fingerprints). The script trains a
prompt on motivational quotes, pushes it to a local store as 1.0.0, trains on and pushes 1.1.0 (a minor bump),
pulls "^1.0" with the base model verified, shows a different base model refused with ``BaseModelMismatchError``,
and yanks 1.1.0 so that "^1.0" goes back to 1.0.0. ``hub.HfStore`` is used the same way for a Hugging Face repo.

Run it (under a minute on 2 CPU cores with the embedded SmolLM2-135M-Instruct):

    python examples/share_and_pin.py --steps 10
    python examples/share_and_pin.py --store-root ~/.cache/peft_ext/hub   # the default store of `peft-ext hub`
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile

import torch
from peft import get_peft_model

import hub
from hub.errors import BaseModelMismatchError
from peft_ext import MultiPromptModel, SoftPromptConfig
from peft_ext.base_models import load_base_model
from peft_ext.cli.data import packaged_quotes
from peft_ext.training import train_soft_prompts

REPO = "my-org/soft-prompts"
TASK = "quotes"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="base model: Hugging Face id or local folder (default: embedded SmolLM2-135M)")
    parser.add_argument("--steps", type=int, default=10, help="training steps before each push")
    parser.add_argument("--output", help="output folder (default: a new temporary folder)")
    parser.add_argument("--store-root", help="local store folder (default: <output>/store)")
    args = parser.parse_args(argv)
    output = args.output or tempfile.mkdtemp(prefix="share-and-pin-")
    store = hub.LocalStore(args.store_root or os.path.join(output, "store"))

    base, tokenizer, _ = load_base_model(args.model)
    config = SoftPromptConfig(
        task_type="CAUSAL_LM",
        init="text",
        init_text="Share an inspiring quote:",
        tokenizer=tokenizer,
        text_length_policy="exact",
    )
    model = get_peft_model(base, config)
    quotes = packaged_quotes(200)

    # 1. Train, save, push as 1.0.0 pinned to the base model (and tokenizer) it was trained on.
    result = train_soft_prompts(model, tokenizer, quotes, os.path.join(output, "run"), max_steps=args.steps)
    model.save_pretrained(os.path.join(output, "quotes-v1"))
    pushed = hub.push(
        os.path.join(output, "quotes-v1"),
        REPO,
        task=TASK,
        version="1.0.0",
        base_model=base,
        tokenizer=tokenizer,
        metrics={"train_loss": result.losses[-1]},
        store=store,
    )
    print(f"pushed {pushed.repo} {pushed.task} {pushed.version} -> {pushed.location}")

    # 2. Train further and push the next minor version; a PeftModel can be pushed directly.
    result = train_soft_prompts(model, tokenizer, quotes, os.path.join(output, "run"), max_steps=args.steps)
    pushed = hub.push(
        model,
        REPO,
        task=TASK,
        bump="minor",
        base_model=base,
        tokenizer=tokenizer,
        metrics={"train_loss": result.losses[-1]},
        store=store,
    )
    print(f"pushed {pushed.repo} {pushed.task} {pushed.version} (bump minor)")

    # 3. Pull by constraint: the newest 1.x, its file hashes and base model verified; a plain adapter folder.
    folder = hub.pull(REPO, TASK, "^1.0", base_model=base, tokenizer=tokenizer, store=store)
    print(f"^1.0 resolves to {hub.resolve(REPO, TASK, '^1.0', store=store)}: {folder}")
    server = MultiPromptModel(base, tokenizer)  # or PeftModel.from_pretrained(base, folder)
    server.add(TASK, folder)
    answer = server.generate(
        ["There are two nice things that should matter to you:"], TASK, max_new_tokens=20, do_sample=False
    )
    print(f"  answer with the pulled prompt: {answer[0]!r}")

    # 4. Any other base model is refused. Here a copy with nudged embeddings stands in for, e.g., a fine-tuned one.
    other = copy.deepcopy(base)
    with torch.no_grad():
        other.get_input_embeddings().weight.mul_(1.01)
    try:
        hub.pull(REPO, TASK, "^1.0", base_model=other, tokenizer=tokenizer, store=store)
    except BaseModelMismatchError as error:
        print(f"refused on another base model: {type(error).__name__}: {error}")

    # 5. Yank 1.1.0: constraints skip it, an exact pull still works, its bytes stay.
    hub.yank(REPO, TASK, "1.1.0", reason="worse on held-out quotes", store=store)
    print(f"after yanking 1.1.0, ^1.0 resolves to {hub.resolve(REPO, TASK, '^1.0', store=store)}")
    exact = hub.pull(REPO, TASK, "1.1.0", base_model=base, tokenizer=tokenizer, store=store)
    print(f"an exact pull of 1.1.0 still works: {exact}")
    for entry in hub.versions(REPO, TASK, store=store):
        print(f"  {entry.version}" + (f"  yanked: {entry.yank_reason}" if entry.yanked else ""))
    print(f"Store in {store.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
