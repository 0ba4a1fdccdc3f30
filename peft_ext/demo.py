"""``peft-ext demo``: the main job on the embedded default model.

For now a short train -> save -> reload -> generate run of one text-initialised soft prompt; the seed job (two
prompts on real data, served side by side) replaces it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

QUOTES_INIT = "Share an inspiring quote:"


def register(commands: Any) -> None:
    parser = commands.add_parser("demo", help="Train, save, reload and serve a soft prompt on the embedded default.")
    parser.add_argument(
        "--model",
        default=None,
        help="Base model: a Hugging Face id or local folder (default: embedded SmolLM2-135M-Instruct).",
    )
    parser.add_argument("--steps", type=int, default=10, help="Training steps.")
    parser.add_argument("--output", default="peft-ext-output", help="Folder for the adapter and the summary.")
    parser.set_defaults(handler=run)


def _quotes(limit: int) -> list[str]:
    from importlib.resources import files

    items = json.loads(files("inspiring_quotes").joinpath("quotes_list.json").read_text(encoding="utf-8"))
    return [f'{QUOTES_INIT} "{item["quote"]}" - {item["author"]}' for item in items[:limit]]


def run(args: argparse.Namespace) -> int:
    from peft import PeftModel, get_peft_model

    from .base_models import load_base_model
    from .config import SoftPromptConfig
    from .training import train_soft_prompts

    timings: dict[str, float] = {}
    start = time.perf_counter()
    base, tokenizer, info = load_base_model(args.model)
    timings["load"] = time.perf_counter() - start

    config = SoftPromptConfig(
        task_type="CAUSAL_LM", init="text", init_text=QUOTES_INIT, tokenizer=tokenizer, text_length_policy="exact"
    )
    model = get_peft_model(base, config)
    start = time.perf_counter()
    result = train_soft_prompts(
        model, tokenizer, _quotes(64), os.path.join(args.output, "trainer"), max_steps=args.steps
    )
    timings["train"] = time.perf_counter() - start

    adapter_dir = os.path.join(args.output, "quotes-adapter")
    model.save_pretrained(adapter_dir)
    # Prompt learning never changes the base weights, so the same base model serves the reloaded adapter.
    served = PeftModel.from_pretrained(model.get_base_model(), adapter_dir).eval()
    start = time.perf_counter()
    inputs = tokenizer(["There are two nice things that should matter to you:"], return_tensors="pt")
    output = served.generate(**inputs, max_new_tokens=24, do_sample=False)
    timings["generate"] = time.perf_counter() - start
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    summary = {"base_model": info.to_dict(), "losses": result.losses, "answer": answer, "seconds": timings}
    with open(os.path.join(args.output, "summary.json"), "w", encoding="utf-8") as file:
        json.dump(summary, file, indent=2)
    print(f"loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f} over {result.steps} steps")
    print(f"answer: {answer!r}")
    print("stage times: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    print(f"artefacts in {os.path.abspath(args.output)}")
    return 0
