"""Plain PEFT with SoftPromptConfig: train, save, reload, mix two adapters in one batch, export for stock PEFT.

``import peft_ext`` registers the SOFT_PROMPT method, so the usual PEFT calls work: ``get_peft_model``,
``save_pretrained``, ``PeftModel.from_pretrained``, ``load_adapter`` and ``generate``, here with a different adapter
per row (``adapter_names``). Two prompts are trained with a minimal PyTorch loop (transformers' ``Trainer`` works
too; ``peft_ext.training.train_soft_prompts`` wraps it), then reloaded onto a fresh copy of the base model as a user
of the adapters would. Last, one is exported as a stock PROMPT_TUNING adapter that loads without peft_ext.

Run it (under a minute on 2 CPU cores with the embedded SmolLM2-135M-Instruct):

    python examples/plain_peft.py --steps 10
    python examples/plain_peft.py --model path/to/a/local/model --output runs/plain
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from peft import PeftModel, get_peft_model

import peft_ext  # noqa: F401  (registers SOFT_PROMPT with PEFT)
from peft_ext import SoftPromptConfig, export_prompt_tuning
from peft_ext.base_models import load_base_model
from peft_ext.cli.data import packaged_prompts, packaged_quotes

INPUTS = ["I want you to act as a motivational coach.", "There are two nice things that should matter to you:"]


def train(model, tokenizer, texts, steps, batch_size=4, learning_rate=0.02):
    """A minimal loop: only soft-prompt parameters require gradients, and only the active adapter's get any."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    tokenizer.padding_side = "right"  # the prompt goes before the text: pad after it
    model.train()
    for step in range(steps):
        start = step * batch_size % len(texts)
        batch = tokenizer(
            texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=48
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        print(f"  [{model.active_adapter}] step {step + 1}/{steps}: loss {loss.item():.3f}")
    model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="base model: Hugging Face id or local folder (default: embedded SmolLM2-135M)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per adapter")
    parser.add_argument("--output", help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    output = args.output or tempfile.mkdtemp(prefix="plain-peft-")

    # 1. Wrap the frozen base model with a soft prompt initialised from text, and train it.
    base, tokenizer, _ = load_base_model(args.model)
    config = SoftPromptConfig(
        task_type="CAUSAL_LM",
        init="text",
        init_text="Write a prompt that tells an AI assistant which role to play:",
        tokenizer=tokenizer,  # used once, to turn init_text into token ids; never saved
        text_length_policy="exact",  # num_virtual_tokens = the text's token count
    )
    model = get_peft_model(base, config, adapter_name="coach")
    model.print_trainable_parameters()
    train(model, tokenizer, packaged_prompts(), args.steps)

    # 2. A second adapter on the same PeftModel: a fixed length, the text repeated to fill it.
    quotes_config = SoftPromptConfig(
        task_type="CAUSAL_LM",
        init="text",
        init_text="Share an inspiring quote:",
        tokenizer=tokenizer,
        num_virtual_tokens=16,
        text_length_policy="repeat",
    )
    model.add_adapter("quotes", quotes_config)
    model.set_adapter("quotes")
    train(model, tokenizer, packaged_quotes(200), args.steps)
    model.save_pretrained(output)  # PEFT's layout: <output>/coach and <output>/quotes
    del model, base

    # 3. Later (or in another process): load both onto a fresh base model and mix them in one batch.
    base, tokenizer, _ = load_base_model(args.model)
    model = PeftModel.from_pretrained(base, os.path.join(output, "coach"), adapter_name="coach")
    model.load_adapter(os.path.join(output, "quotes"), adapter_name="quotes")
    tokenizer.padding_side = "left"  # generation appends on the right
    rows = [(INPUTS[0], "coach"), (INPUTS[1], "quotes"), (INPUTS[1], None)]  # None: the bare base model
    batch = tokenizer([text for text, _ in rows], return_tensors="pt", padding=True)
    generated = model.generate(
        **batch, adapter_names=[adapter for _, adapter in rows], max_new_tokens=20, do_sample=False
    )
    answers = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    for (text, adapter), answer in zip(rows, answers, strict=True):
        print(f"[{adapter or 'base model'}] {text} -> {answer!r}")

    # 4. Export for users without peft_ext: a stock PROMPT_TUNING adapter with the same final prompt.
    stock_folder = export_prompt_tuning(os.path.join(output, "coach"), os.path.join(output, "coach-stock"))
    batch = tokenizer(INPUTS[:1], return_tensors="pt")
    with torch.no_grad():
        ours = model(**batch, adapter_names=["coach"]).logits
    # What a user without peft_ext runs (PEFT keeps one adapter type per PeftModel, so on its own base model):
    stock = PeftModel.from_pretrained(load_base_model(args.model).model, stock_folder)
    with torch.no_grad():
        theirs = stock(**batch).logits
    print(f"stock PROMPT_TUNING export in {stock_folder}: max logit difference {(ours - theirs).abs().max():.2e}")
    print(f"Adapters saved in {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
