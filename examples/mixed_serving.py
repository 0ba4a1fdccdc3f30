"""Serve many soft prompts from one frozen base model: a different prompt per row of one batch.

``MultiPromptModel`` keeps each prompt as a small ``[n, hidden]`` tensor (a few KB; the base model is hundreds of
MB), computes each prompt's keys/values once and reuses them for every request. Every row of a mixed batch gets
exactly the tokens it would get alone. The script trains two prompts briefly, then shows: one mixed batch (two
trained prompts, a prompt given as a tensor, the bare base model), a per-thread default prompt with ``using()``,
the KV-cache statistics, and ``capacity``, which bounds how many prompts stay loaded.

Run it (under a minute on 2 CPU cores with the embedded SmolLM2-135M-Instruct):

    python examples/mixed_serving.py --steps 10
"""

from __future__ import annotations

import argparse
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

from peft import get_peft_model

from peft_ext import MultiPromptModel, SoftPromptConfig
from peft_ext.base_models import load_base_model
from peft_ext.cli.data import packaged_prompts, packaged_quotes
from peft_ext.training import train_soft_prompts

INIT_TEXTS = {
    "coach": "Write a prompt that tells an AI assistant which role to play:",
    "quotes": "Share an inspiring, motivational quote:",
}
COACH_INPUT = "I want you to act as a motivational coach."
QUOTE_INPUT = "There are two nice things that should matter to you:"
GENERATION = {"max_new_tokens": 16, "do_sample": False}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="base model: Hugging Face id or local folder (default: embedded SmolLM2-135M)")
    parser.add_argument("--steps", type=int, default=10, help="training steps for the two prompts")
    parser.add_argument("--output", help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    output = args.output or tempfile.mkdtemp(prefix="mixed-serving-")

    # 1. Two soft prompts, trained briefly in one mixed-batch run and saved as adapter folders (<output>/<name>).
    #    Folders pulled with hub.pull(...) are served the same way.
    base, tokenizer, _ = load_base_model(args.model)
    model = None
    for name, init_text in INIT_TEXTS.items():
        config = SoftPromptConfig(
            task_type="CAUSAL_LM", init="text", init_text=init_text, tokenizer=tokenizer, text_length_policy="exact"
        )
        if model is None:
            model = get_peft_model(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    data = {"coach": packaged_prompts(), "quotes": packaged_quotes(200)}
    train_soft_prompts(model, tokenizer, data, os.path.join(output, "trainer"), max_steps=args.steps)
    model.save_pretrained(output)

    # 2. One server on the frozen base model. A prompt comes from an adapter folder, a PeftModel or a tensor: here the
    #    embeddings of a plain text instruction serve as a third, untrained prompt.
    server = MultiPromptModel(base, tokenizer, capacity=1000)
    server.add("coach", os.path.join(output, "coach"))
    server.add("quotes", os.path.join(output, "quotes"))
    instruction = tokenizer("Answer in one short sentence.", return_tensors="pt")["input_ids"][0]
    server.add("short", base.get_input_embeddings()(instruction).detach())
    print(f"serving {server.names}, prompt shapes {[tuple(server.prompt(n).shape) for n in server.names]}")

    # 3. One mixed batch: a different prompt per row; None is the bare base model.
    rows = [(COACH_INPUT, "coach"), (QUOTE_INPUT, "quotes"), (QUOTE_INPUT, "short"), (QUOTE_INPUT, None)]
    answers = server.generate([text for text, _ in rows], [name for _, name in rows], **GENERATION)
    for (text, name), answer in zip(rows, answers, strict=True):
        print(f"  [{name or 'base model'}] {text} -> {answer!r}")
    alone = [server.generate([text], [name], **GENERATION)[0] for text, name in rows]
    print(f"each row identical to the same request alone: {alone == answers}")

    # 4. using(): a default prompt for the calls of one thread that name no prompt; other threads are unaffected.
    def answer_as(name, text):
        with server.using(name):
            return server.generate([text], **GENERATION)[0]

    with ThreadPoolExecutor(max_workers=2) as pool:
        coach, quotes = pool.map(answer_as, ["coach", "quotes"], [COACH_INPUT, QUOTE_INPUT])
    print(f"thread with using('coach'): {coach!r}\nthread with using('quotes'): {quotes!r}")

    # 5. Each prompt's keys/values were computed once (misses) and reused by every later request (hits).
    print(server.kv_cache_stats())

    # 6. capacity bounds the loaded prompts: the least recently used is evicted and, when it came from a folder,
    #    reloaded on its next use.
    small = MultiPromptModel(base, tokenizer, capacity=1)
    small.add("coach", os.path.join(output, "coach"))
    small.add("quotes", os.path.join(output, "quotes"))
    print(f"capacity=1: loaded {small.names}; 'coach' still servable: {'coach' in small}")
    small.generate([COACH_INPUT], ["coach"], **GENERATION)
    print(f"after a request for 'coach': loaded {small.names}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
