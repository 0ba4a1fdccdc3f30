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

# The recipe a user who sets nothing gets: the best measured by benchmarks/quality.py (README, "Training").
DEFAULT_INIT, DEFAULT_PLACEMENT, DEFAULT_TOKENS = "frequent", "deep", 16
DEFAULT_LR = {"input": 3e-2, "deep": 1e-2}  # per placement: a deep prompt's values are the layers' keys/values


def register(commands: Any) -> None:
    parser = commands.add_parser("train", help="Train one soft prompt on a text/JSONL/JSON/CSV file or a dataset.")
    data = parser.add_argument_group("data")
    data.add_argument("data", help="A .txt (one text per line), .jsonl, .json or .csv file, or a datasets name.")
    data.add_argument("--text-column", help="Column holding the text (default: text, prompt, quote, content, ...).")
    data.add_argument("--max-length", type=int, default=64, help="Tokens kept per text (default 64).")
    data.add_argument(
        "--label-column",
        help="Train a classifier: the column holding each row's label. The prompt learns to answer the label after "
        "'<text>\\n<label prompt>'.",
    )
    data.add_argument(
        "--label-prompt", default="Label:", help="What follows each text before its label (default Label:)."
    )
    data.add_argument(
        "--eval",
        metavar="FILE",
        help="Held-out rows in the training data's format: reports their loss, or with --label-column the accuracy "
        "of choosing their label, before and after training.",
    )
    model = parser.add_argument_group("model and prompt")
    model.add_argument("--model", help="Base model: Hugging Face id or local folder (default: embedded SmolLM2-135M).")
    model.add_argument(
        "--num-virtual-tokens",
        type=int,
        help=f"Prompt length (default {DEFAULT_TOKENS}; --init adapter takes the adapter's, --text-length-policy "
        "exact the text's).",
    )
    model.add_argument(
        "--init",
        default=DEFAULT_INIT,
        help=f"frequent (tokens frequent in the training data) | random | vocab | text | labels | adapter "
        f"(default {DEFAULT_INIT}).",
    )
    model.add_argument(
        "--placement",
        help="deep (keys/values in every layer, started from the init's keys/values; direct reparameterization "
        "only) | input (vectors before the input embeddings: what vLLM and export_prompt_tuning take) "
        f"(default {DEFAULT_PLACEMENT}; input with an encoder --reparameterization; with --init adapter, the "
        "adapter's own).",
    )
    model.add_argument("--init-text", help="Text for --init text.")
    model.add_argument("--text-length-policy", help="repeat | truncate | pad | exact, when the text's length differs.")
    model.add_argument("--label-words", help="Comma-separated class-label words for --init labels.")
    model.add_argument("--init-adapter", help="Adapter folder to start from, for --init adapter.")
    model.add_argument("--init-seed", type=int, help="Seed of the frequent/random/vocab init.")
    model.add_argument("--anchors", type=int, default=0, help="First k virtual tokens stay fixed (default 0).")
    model.add_argument("--reparameterization", default="direct", help="direct | mlp | lstm | residual.")
    model.add_argument("--encoder-hidden-size", type=int, help="Width of the mlp/lstm/residual encoder.")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=float, default=1.0, help="Epochs (default 1; --steps overrides).")
    training.add_argument("--steps", type=int, default=-1, help="Training steps (default: from --epochs).")
    training.add_argument(
        "--lr",
        type=float,
        help="Learning rate (default "
        + ", ".join(f"{lr:g} for --placement {placement}" for placement, lr in DEFAULT_LR.items())
        + ").",
    )
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


def _config(args: argparse.Namespace, tokenizer: Any, texts: list[Any], choices: list[str] | None) -> Any:
    from ..soft_prompt import SoftPromptConfig

    tokens = args.num_virtual_tokens
    if tokens is None and not args.init_adapter:  # an adapter has its own length
        tokens = DEFAULT_TOKENS
    return SoftPromptConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=tokens,
        placement=_placement(args),
        init=args.init,
        init_text=args.init_text,
        text_length_policy=args.text_length_policy,
        tokenizer=tokenizer,  # used by the inits that need one (text, labels, frequent)
        init_texts=[text if isinstance(text, str) else text.context + text.target for text in texts],
        label_words=_label_words(args, choices),
        init_adapter=args.init_adapter,
        init_seed=args.init_seed,
        num_anchor_tokens=args.anchors,
        reparameterization=args.reparameterization,
        encoder_hidden_size=args.encoder_hidden_size,
    )


def _placement(args: argparse.Namespace) -> str:
    """``--placement``, or the default recipe's: a prompt trained on from a saved adapter keeps that adapter's kind,
    and one trained through an encoder (mlp, lstm, residual) is an input-level prompt, the only kind encoders make."""
    if args.placement:
        return str(args.placement)
    if args.reparameterization != "direct":
        return "input"
    if args.init == "adapter" and args.init_adapter:
        from ..adapter_files import read_adapter_folder

        return read_adapter_folder(args.init_adapter, deep=True).kind.value
    return DEFAULT_PLACEMENT


def _label_words(args: argparse.Namespace, choices: list[str] | None) -> list[str] | None:
    if args.label_words:
        return [word.strip() for word in args.label_words.split(",")]
    return [choice.strip() for choice in choices] if choices else None  # --init labels: the data's labels


def _rows(args: argparse.Namespace, source: str, held_out: bool = False) -> list[Any]:
    """Texts (scored whole), or with ``--label-column`` one :class:`Example` per row: the label after its text."""
    from ..evaluation import Example
    from .data import load_texts, read_labelled

    if not args.label_column:
        texts = load_texts(source, args.text_column)
        return [Example("", text) for text in texts] if held_out else texts
    pairs = read_labelled(source, args.label_column, args.text_column)
    return [Example(f"{text}\n{args.label_prompt}", f" {label}") for text, label in pairs]


def _evaluate(model: Any, tokenizer: Any, rows: list[Any], choices: list[str] | None, max_length: int) -> float:
    """Accuracy of choosing each row's label among ``choices``; without choices, the mean loss of the texts."""
    from ..evaluation import accuracy, mean_loss

    model.eval()
    if choices:
        return accuracy(model, tokenizer, rows, choices, max_length=max_length)
    return mean_loss(model, tokenizer, rows, max_length=max_length)


def _card_metrics(losses: list[float], held_out: dict[str, Any] | None) -> dict[str, float] | None:
    metrics = {"final_loss": losses[-1]} if losses else {}
    if held_out:
        metrics[f"held_out_{held_out['metric']}"] = held_out["after"]
    return metrics or None


def _publisher() -> Any:
    found = list(entry_points(group="peft_ext.publish"))
    if not found:
        raise InvalidConfigError("--push needs a publisher; install peft-ext with its hub package.")
    return found[0].load()


def run(args: argparse.Namespace) -> int:
    from peft import get_peft_model

    from ..base_models import load_base_model
    from ..training import train_soft_prompts
    from .plots import plot_losses

    texts = _rows(args, args.data)  # before the model: bad data fails fast
    choices = sorted({row.target for row in texts}) if args.label_column else None  # the labels seen
    if choices is not None and len(choices) < 2:
        raise InvalidConfigError(f"{args.data}: --label-column {args.label_column} needs at least two labels.")
    held_out = _rows(args, args.eval, held_out=True) if args.eval else None
    unknown = sorted({row.target.strip() for row in held_out or []} - {c.strip() for c in choices or []})
    if choices and unknown:
        raise InvalidConfigError(f"{args.eval}: labels {unknown} never occur in the training data {args.data}.")
    publish = _publisher() if args.push else None
    base, tokenizer, info = load_base_model(args.model)
    model = get_peft_model(base, _config(args, tokenizer, texts, choices))
    model.print_trainable_parameters()
    learning_rate = args.lr if args.lr is not None else DEFAULT_LR[model.peft_config["default"].placement]
    before = _evaluate(model, tokenizer, held_out, choices, args.max_length) if held_out else None
    start = time.perf_counter()
    result = train_soft_prompts(
        model,
        tokenizer,
        texts,
        args.output,
        max_steps=args.steps,
        num_train_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=learning_rate,
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
        "placement": str(model.peft_config["default"].placement),
        "learning_rate": learning_rate,
        "steps": result.steps,
        "losses": result.losses,
        "seconds": time.perf_counter() - start,
        "base_model": info.to_dict(),
        "adapter": adapter_dir,
        "loss_plot": plot,
    }
    if held_out:
        metric = "accuracy" if choices else "loss"
        after = _evaluate(model, tokenizer, held_out, choices, args.max_length)
        summary["eval"] = {
            "file": args.eval,
            "examples": len(held_out),
            "metric": metric,
            "before": before,
            "after": after,
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
            metrics=_card_metrics(result.losses, summary.get("eval")),
        )
    with open(os.path.join(args.output, "summary.json"), "w", encoding="utf-8") as file:
        json.dump(summary, file, indent=2)
    first, last = (result.losses[0], result.losses[-1]) if result.losses else (float("nan"),) * 2
    print(f"trained {result.steps} steps: loss {first:.3f} -> {last:.3f}; adapter in {adapter_dir}; plot {plot}")
    if "eval" in summary:
        e = summary["eval"]
        print(f"held-out {e['metric']} on {e['examples']} rows of {e['file']}: {e['before']:.4g} -> {e['after']:.4g}")
    if "pushed" in summary:
        print(f"pushed {summary['pushed']}")
    return 0
