"""One training step on a right-padded batch: a SOFT_PROMPT adapter against stock PEFT prompt tuning.

Both contenders get the same base model (the embedded default), the same 20-token prompt values, the same batch of
8 right-padded rows (as peft_ext's training collator pads them) and an AdamW step, alternating. Ours lays every
row out with positions counted from its prompt and computes the prompt once per step; stock PEFT prepends the
prompt to every row. Target: ours <= 1.05x stock PEFT.
"""

from __future__ import annotations

import argparse

import torch
from common import alternate, figure, median, write_result
from peft import PromptTuningConfig, get_peft_model

from peft_ext import SoftPromptConfig
from peft_ext.base_models import load_base_model

VIRTUAL, ROWS, LONGEST = 20, 8, 72


def _batch(vocab_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(LONGEST // 2, LONGEST + 1, (ROWS,), generator=generator)
    input_ids = torch.randint(3, vocab_size, (ROWS, LONGEST), generator=generator)
    mask = (torch.arange(LONGEST)[None] < lengths[:, None]).long()  # right padding
    return {"input_ids": input_ids * mask, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    base, _, _ = load_base_model()
    batch = _batch(base.get_input_embeddings().weight.shape[0])
    ours = get_peft_model(
        base, SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL, init_seed=0), adapter_name="ours"
    )
    stock = get_peft_model(
        load_base_model()[0], PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL), "stock"
    )
    with torch.no_grad():
        stock.prompt_encoder["stock"].embedding.weight.copy_(ours.prompt_encoder["ours"].embedding.weight)

    def step(model: torch.nn.Module) -> None:
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    seconds = alternate({"soft_prompt": lambda: step(ours), "peft_prompt_tuning": lambda: step(stock)}, args.repeats)
    ours_s, stock_s = median(seconds["soft_prompt"]), median(seconds["peft_prompt_tuning"])
    write_result(
        "train_step",
        {
            "setup": {"virtual_tokens": VIRTUAL, "rows": ROWS, "longest_row": LONGEST, "padding": "right"},
            "seconds": seconds,
            "median_seconds": {"soft_prompt": ours_s, "peft_prompt_tuning": stock_s},
            "figures": [
                figure(
                    "training step / stock PEFT prompt tuning",
                    ours_s / stock_s,
                    "x",
                    "<= 1.05x",
                    ours_s <= 1.05 * stock_s,
                )
            ],
        },
    )


if __name__ == "__main__":
    main()
