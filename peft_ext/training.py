"""Training soft prompts through transformers' ``Trainer`` (and so accelerate, DDP, checkpoints and resume)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TrainingResult:
    losses: list[float]  # training loss at each logging step
    steps: int
    seconds: float


class _TextDataset(torch.utils.data.Dataset):
    def __init__(self, tokenizer: Any, texts: Sequence[str], max_length: int) -> None:
        self.rows = [tokenizer(text, truncation=True, max_length=max_length)["input_ids"] for text in texts]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return {"input_ids": self.rows[index]}


def train_soft_prompt(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
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
    """Train ``model``'s active soft prompt as a causal LM on ``texts``; the base model stays frozen.

    ``output_dir`` receives Trainer checkpoints when ``save_steps`` is set, so an interrupted run resumes with
    ``resume_from_checkpoint=True``.
    """
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
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
        train_dataset=_TextDataset(tokenizer, texts, max_length),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    output = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return TrainingResult(losses=losses, steps=output.global_step, seconds=output.metrics["train_runtime"])
