"""``peft-ext train``: train one soft prompt from a file or dataset, with every SoftPromptConfig strategy as a flag.

``--push`` hands the saved adapter to a publisher registered under the ``peft_ext.publish`` entry-point group (the
``hub`` package registers one), so peft_ext itself never imports the hub.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from importlib.metadata import entry_points
from typing import Any

from ..errors import InvalidConfigError


def register(commands: Any) -> None:
    parser = commands.add_parser("train", help="Train one soft prompt on a text/JSONL/JSON/CSV file or a dataset.")
    data = parser.add_argument_group("data")
    data.add_argument("data", help="A .txt (one text per line), .jsonl, .json or .csv file, or a datasets name.")
    data.add_argument("--text-column", help="Column holding the text (default: text, prompt, quote, content, ...).")
    data.add_argument("--max-length", type=int, default=64, help="Tokens kept per text (default 64).")
    model = parser.add_argument_group("model and prompt")
    model.add_argument("--model", help="Base model: Hugging Face id or local folder (default: embedded SmolLM2-135M).")
    model.add_argument(
        "--num-virtual-tokens", type=int, help="Prompt length (optional with --text-length-policy exact)."
    )
    model.add_argument("--init", default="random", help="random | vocab | text | labels | adapter (default random).")
    model.add_argument("--init-text", help="Text for --init text.")
    model.add_argument("--text-length-policy", help="repeat | truncate | pad | exact, when the text's length differs.")
    model.add_argument("--label-words", help="Comma-separated class-label words for --init labels.")
    model.add_argument("--init-adapter", help="Adapter folder to start from, for --init adapter.")
    model.add_argument("--init-seed", type=int, help="Seed of the random/vocab init.")
    model.add_argument("--anchors", type=int, default=0, help="First k virtual tokens stay fixed (default 0).")
    model.add_argument("--reparameterization", default="direct", help="direct | mlp | lstm | residual.")
    model.add_argument("--encoder-hidden-size", type=int, help="Width of the mlp/lstm/residual encoder.")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=float, default=1.0, help="Epochs (default 1; --steps overrides).")
    training.add_argument("--steps", type=int, default=-1, help="Training steps (default: from --epochs).")
    training.add_argument("--lr", type=float, default=3e-2, help="Learning rate (default 0.03).")
    training.add_argument("--batch-size", type=int, default=8)
    training.add_argument("--save-steps", type=int, help="Write a resumable checkpoint every N steps.")
    training.add_argument("--resume", action="store_true", help="Resume from the last checkpoint in --output.")
    training.add_argument("--output", default="peft-ext-output/train", help="Output folder.")
    sharing = parser.add_argument_group("sharing")
    sharing.add_argument("--push", metavar="REPO", help="Push the trained prompt to this repo of the store.")
    sharing.add_argument("--task", help="Task name when pushing (default: the data file's stem).")
    sharing.add_argument("--version", help="Exact version to push (default: bump the latest).")
    sharing.add_argument("--bump", default="minor", choices=["patch", "minor", "major"])
    sharing.add_argument("--store-root", help="Local store folder (default: the user cache; see peft-ext hub).")
    parser.set_defaults(handler=run)


def _config(args: argparse.Namespace, tokenizer: Any) -> Any:
    from ..soft_prompt import SoftPromptConfig

    return SoftPromptConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=args.num_virtual_tokens,
        init=args.init,
        init_text=args.init_text,
        text_length_policy=args.text_length_policy,
        tokenizer=tokenizer,  # used by the inits that need one (text, labels)
        label_words=[w.strip() for w in args.label_words.split(",")] if args.label_words else None,
        init_adapter=args.init_adapter,
        init_seed=args.init_seed,
        num_anchor_tokens=args.anchors,
        reparameterization=args.reparameterization,
        encoder_hidden_size=args.encoder_hidden_size,
    )


def _publisher() -> Any:
    found = list(entry_points(group="peft_ext.publish"))
    if not found:
        raise InvalidConfigError("--push needs a publisher; install peft-ext with its hub package.")
    return found[0].load()


def run(args: argparse.Namespace) -> int:
    from peft import get_peft_model

    from ..training import train_soft_prompts
    from .base_models import load_base_model
    from .data import load_texts
    from .plots import plot_losses

    texts = load_texts(args.data, args.text_column)  # before the model: bad data fails fast
    publish = _publisher() if args.push else None
    base, tokenizer, info = load_base_model(args.model)
    model = get_peft_model(base, _config(args, tokenizer))
    model.print_trainable_parameters()
    start = time.perf_counter()
    result = train_soft_prompts(
        model,
        tokenizer,
        texts,
        args.output,
        max_steps=args.steps,
        num_train_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        save_steps=args.save_steps,
        resume_from_checkpoint=True if args.resume else None,
    )
    adapter_dir = os.path.join(args.output, "adapter")
    model.save_pretrained(adapter_dir)
    plot = plot_losses({"train": result.losses}, os.path.join(args.output, "loss.png"))
    summary = {
        "data": args.data,
        "texts": len(texts),
        "steps": result.steps,
        "losses": result.losses,
        "seconds": time.perf_counter() - start,
        "base_model": info.to_dict(),
        "adapter": adapter_dir,
        "loss_plot": plot,
    }
    if publish is not None:
        task = args.task or os.path.splitext(os.path.basename(args.data))[0]
        summary["pushed"] = publish(
            adapter_dir,
            args.push,
            task=task,
            version=args.version,
            bump=args.bump,
            store_root=args.store_root,
            base_model=base,
            tokenizer=tokenizer,
            metrics={"final_loss": result.losses[-1]} if result.losses else None,
        )
    with open(os.path.join(args.output, "summary.json"), "w", encoding="utf-8") as file:
        json.dump(summary, file, indent=2)
    first, last = (result.losses[0], result.losses[-1]) if result.losses else (float("nan"),) * 2
    print(f"trained {result.steps} steps: loss {first:.3f} -> {last:.3f}; adapter in {adapter_dir}; plot {plot}")
    if "pushed" in summary:
        print(f"pushed {summary['pushed']}")
    return 0
