"""16 requests, 16 different 20-token soft prompts, 16 new tokens each, on the embedded default model.

Contenders, alternating: MultiPromptModel's single mixed batch (prompt KV reused), stock PEFT's set_adapter loop
(PEFT serves one prompt adapter at a time), and the bare base model generating the same 16 rows in one batch.
Targets: >= 8x PEFT, >= 0.85x the bare base model. The tokens are checked against the right reference: stock PEFT's
prompt-tuning ``forward`` decoded greedily one token at a time (its ``generate`` is wrong from transformers 5.24 on;
whether it agrees is recorded too).
"""

from __future__ import annotations

import argparse
import json
from importlib.resources import files

import torch
from common import alternate, figure, median, write_result
from peft import PromptTuningConfig, get_peft_model

from peft_ext import MultiPromptModel
from peft_ext.base_models import load_base_model

REQUESTS, PROMPT_TOKENS, NEW_TOKENS = 16, 20, 16


def request_texts(count: int) -> list[str]:
    quotes = json.loads(files("inspiring_quotes").joinpath("quotes_list.json").read_text(encoding="utf-8"))
    return [item["quote"][:120] for item in quotes[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    base, tokenizer, _ = load_base_model()
    tokenizer.padding_side = "left"
    texts = request_texts(REQUESTS)
    names = [f"task{i}" for i in range(REQUESTS)]
    generator = torch.Generator().manual_seed(0)
    vocab = base.get_input_embeddings().weight.detach()
    prompts = {n: vocab[torch.randint(0, vocab.shape[0], (PROMPT_TOKENS,), generator=generator)].clone() for n in names}
    gen = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}

    peft_model = None
    for name in names:
        config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=PROMPT_TOKENS)
        if peft_model is None:
            peft_model = get_peft_model(base, config, adapter_name=name)
        else:
            peft_model.add_adapter(name, config)
        with torch.no_grad():
            peft_model.prompt_encoder[name].embedding.weight.copy_(prompts[name])
    assert peft_model is not None
    peft_model.eval()
    server = MultiPromptModel(base, tokenizer)
    for name in names:
        server.add(name, prompts[name])
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    singles = [tokenizer(text, return_tensors="pt") for text in texts]
    outputs: dict[str, list[torch.Tensor]] = {}

    def ours() -> None:
        ids = server.generate(batch["input_ids"], names, attention_mask=batch["attention_mask"], **gen)
        outputs["ours"] = list(ids[:, -NEW_TOKENS:])

    def peft_loop() -> None:
        rows = []
        for name, single in zip(names, singles, strict=True):
            peft_model.set_adapter(name)
            rows.append(peft_model.generate(**single, **gen)[0, -NEW_TOKENS:])
        outputs["peft"] = rows

    def bare() -> None:
        with torch.no_grad():
            base.generate(**batch, **gen, pad_token_id=tokenizer.pad_token_id)

    seconds = alternate({"ours": ours, "peft_set_adapter_loop": peft_loop, "bare_base_batch": bare}, args.repeats)
    reference = []
    with torch.no_grad():
        for name, single in zip(names, singles, strict=True):
            peft_model.set_adapter(name)
            ids = single["input_ids"]
            for _ in range(NEW_TOKENS):
                ids = torch.cat([ids, peft_model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            reference.append(ids[0, -NEW_TOKENS:])
    identical = all(torch.equal(a, b) for a, b in zip(outputs["ours"], reference, strict=True))
    peft_generate_right = all(torch.equal(a, b) for a, b in zip(outputs["peft"], reference, strict=True))
    ours_s, peft_s, bare_s = (median(seconds[k]) for k in ("ours", "peft_set_adapter_loop", "bare_base_batch"))
    write_result(
        "mixed_generation",
        {
            "setup": {
                "requests": REQUESTS,
                "adapters": REQUESTS,
                "prompt_tokens": PROMPT_TOKENS,
                "new_tokens": NEW_TOKENS,
            },
            "seconds": seconds,
            "median_seconds": {"ours": ours_s, "peft_set_adapter_loop": peft_s, "bare_base_batch": bare_s},
            "tokens_identical_to_peft_forward": identical,
            "peft_generate_equals_its_forward": peft_generate_right,
            "figures": [
                figure("speed-up vs PEFT set_adapter loop", peft_s / ours_s, "x", ">= 8x", peft_s / ours_s >= 8),
                figure("speed vs bare base batch", bare_s / ours_s, "x", ">= 0.85x", bare_s / ours_s >= 0.85),
            ],
        },
    )
    if not identical:
        raise SystemExit("mixed batch tokens differ from PEFT's forward decoded greedily, one request at a time")


if __name__ == "__main__":
    main()
