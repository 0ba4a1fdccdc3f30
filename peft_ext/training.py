"""Training soft prompts through transformers' ``Trainer`` (and so accelerate, DDP, checkpoints and resume)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .adapter_files import pad_token_id
from .evaluation import Example, collate, encode
from .integration import is_deep_prompt, score_every_label


@dataclass
class TrainingResult:
    losses: list[float]  # training loss at each logging step
    steps: int
    seconds: float


class _TextDataset(torch.utils.data.Dataset):
    """Tokenised rows with their labels, each tagged with the adapter whose prompt it trains."""

    def __init__(
        self,
        tokenizer: Any,
        texts_by_adapter: Mapping[str, Sequence[str | Example]],
        max_length: int,
        deep: frozenset[str] = frozenset(),
    ) -> None:
        self.rows = [
            (*_tokenised(tokenizer, item, max_length, first_scored=name not in deep), name)
            for name, items in texts_by_adapter.items()
            for item in items
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[list[int], list[int], str]:
        return self.rows[index]


def _tokenised(
    tokenizer: Any, item: str | Example, max_length: int, first_scored: bool = True
) -> tuple[list[int], list[int]]:
    """A text is scored whole; an :class:`Example` only on its target. Without ``first_scored`` (a deep prompt,
    which has no output position to predict the row's first token from) the first token is not a label, so that
    Trainer's token count, the loss's divisor, counts only the tokens scored."""
    if isinstance(item, Example):
        ids, labels = encode(tokenizer, item, max_length)
    else:
        ids = tokenizer(item, truncation=True, max_length=max_length)["input_ids"]
        labels = list(ids)
    if not first_scored and labels and labels[0] != -100:
        labels[0] = -100
    return ids, labels


class _MixedAdapterCollator:
    """Pads a batch for causal-LM training and names each row's adapter, so one batch trains several prompts.

    Pads on the right whatever the tokenizer's ``padding_side``: the prompt goes before the row, so with left padding
    masked pad slots would sit between prompt and text and the text's first token would be scored from a pad slot.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.pad_token_id = pad_token_id(tokenizer)  # the caller's tokenizer is left as it is

    def __call__(self, rows: list[tuple[list[int], list[int], str]]) -> dict[str, Any]:
        batch: dict[str, Any] = collate([(ids, labels) for ids, labels, _ in rows], self.pad_token_id)
        batch["adapter_names"] = [name for _, _, name in rows]
        return batch


def train_soft_prompts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str | Example] | Mapping[str, Sequence[str | Example]],
    output_dir: str | os.PathLike,
    *,
    max_steps: int = -1,
    num_train_epochs: float = 1.0,
    batch_size: int = 8,
    learning_rate: float = 3e-2,
    max_length: int = 64,
    seed: int = 0,
    save_steps: int | None = None,
    resume_from_checkpoint: str | bool | None = None,
    show_progress: bool = True,
    **training_args: Any,
) -> TrainingResult:
    """Train soft prompts of ``model`` as a causal LM; the base model stays frozen.

    ``texts`` is a list (trains the active adapter) or ``{adapter_name: texts}``: then batches mix rows of several
    adapters and each row updates only its own prompt, so several prompts train in one run. A text is scored whole;
    an :class:`~peft_ext.evaluation.Example` only on its target (e.g. a class label after its text).
    ``output_dir`` receives Trainer checkpoints when ``save_steps`` is set, so an interrupted run resumes with
    ``resume_from_checkpoint``.
    """
    from transformers import Trainer, TrainingArguments

    texts_by_adapter = dict(texts) if isinstance(texts, Mapping) else {model.active_adapter: list(texts)}
    for name in texts_by_adapter:
        model.prompt_encoder[name].requires_grad_(True)  # PEFT adds extra adapters frozen
    deep = frozenset(name for name in texts_by_adapter if is_deep_prompt(model.peft_config[name]))
    training_args.setdefault("dataloader_pin_memory", torch.cuda.is_available())  # on CPU pinning only warns
    arguments = TrainingArguments(
        output_dir=os.fspath(output_dir),
        max_steps=max_steps,
        num_train_epochs=num_train_epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to=[],
        seed=seed,
        disable_tqdm=not show_progress,
        **training_args,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=_TextDataset(tokenizer, texts_by_adapter, max_length, deep),
        data_collator=_MixedAdapterCollator(tokenizer),
    )
    score_every_label(trainer)  # a prompt precedes each text, so its first token is a target too (deep: unlabelled)
    output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return TrainingResult(losses=losses, steps=output.global_step, seconds=output.metrics["train_runtime"])
