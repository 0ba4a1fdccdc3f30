"""Prefill of 100 virtual + 32 real tokens: cached prompt keys/values vs the bare base model on the 32 tokens.

Contenders, alternating, each a forward pass over a batch of 8 rows of 32 real tokens: MultiPromptModel (prompt KV
computed once, then reused), stock PEFT prompt tuning (recomputes the 100 virtual tokens every time), and the bare
base model. Target: ours <= 1.15x the bare base model.
"""

from __future__ import annotations

import argparse

import torch
from common import alternate, figure, median, write_result
from peft import PromptTuningConfig, get_peft_model

from peft_ext import MultiPromptModel
from peft_ext.base_models import load_base_model

VIRTUAL, REAL, ROWS = 100, 32, 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    base, _, _ = load_base_model()
    generator = torch.Generator().manual_seed(0)
    vocab = base.get_input_embeddings().weight.detach()
    prompt = vocab[torch.randint(0, vocab.shape[0], (VIRTUAL,), generator=generator)].clone()
    input_ids = torch.randint(0, vocab.shape[0], (ROWS, REAL), generator=generator)

    server = MultiPromptModel(base)
    server.add("long", prompt)
    peft_model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL)).eval()
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt)

    def ours() -> None:
        server(input_ids, ["long"] * ROWS)

    def peft() -> None:
        with torch.no_grad():
            peft_model(input_ids=input_ids)

    def bare() -> None:
        with torch.no_grad():
            base(input_ids=input_ids)

    seconds = alternate({"ours_cached_kv": ours, "peft_prompt_tuning": peft, "bare_base": bare}, args.repeats)
    ours_s, peft_s, bare_s = (median(seconds[k]) for k in ("ours_cached_kv", "peft_prompt_tuning", "bare_base"))
    with torch.no_grad():
        recomputed = peft_model(input_ids=input_ids).logits[:, VIRTUAL:]
    max_difference = float((server(input_ids, ["long"] * ROWS) - recomputed).abs().max())
    write_result(
        "prefill",
        {
            "setup": {"virtual_tokens": VIRTUAL, "real_tokens": REAL, "rows": ROWS},
            "seconds": seconds,
            "median_seconds": {"ours_cached_kv": ours_s, "peft_prompt_tuning": peft_s, "bare_base": bare_s},
            "max_logit_difference_vs_recomputed": max_difference,
            "kv_cache": vars(server.kv_cache_stats()),
            "figures": [
                figure("cached-KV prefill / bare base", ours_s / bare_s, "x", "<= 1.15x", ours_s / bare_s <= 1.15),
                figure("PEFT prefill / bare base (reference)", peft_s / bare_s, "x", "~3.8x", True),
            ],
        },
    )


if __name__ == "__main__":
    main()
