"""Held-out evaluation of a (soft-prompted) causal LM: mean loss on texts, and accuracy at choosing a label.

Both score exactly what training optimises: a row is a ``context`` (given, not scored) followed by a ``target``
(scored), tokenised apart and joined, so training and evaluation see the same token boundaries. They work on a
``PeftModel`` of any prompt-learning method (its logits start with one column per virtual token; only the text's
columns are read) and on a bare model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch

from .adapter_files import pad_token_id
from .errors import InvalidConfigError


class Example(NamedTuple):
    """One row: ``context`` is given to the model, ``target`` is what it is scored on."""

    context: str
    target: str


def encode(tokenizer: Any, example: Example, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of context + target and their labels (-100 on the context), the context cut to fit ``max_length``."""
    context = tokenizer(example.context, add_special_tokens=False)["input_ids"] if example.context else []
    target = tokenizer(example.target, add_special_tokens=False)["input_ids"][:max_length]
    if not target:
        raise InvalidConfigError(f"The target {example.target!r} tokenises to no tokens; nothing would be scored.")
    context = context[: max(0, max_length - len(target))]
    return context + target, [-100] * len(context) + target


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding): what training feeds too."""
    longest = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(row_labels)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _text_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the batch's own columns ``[rows, length, vocab]`` (prompt-learning methods put virtual ones first)."""
    device = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    return logits[:, -batch["input_ids"].shape[1] :].float()


def _token_log_probs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Log-probability of every labelled token ``[rows, length]``; 0 where the label is -100."""
    logits = _text_logits(model, batch)
    labels = batch["labels"].to(logits.device)
    predicted, targets = logits[:, :-1], labels[:, 1:]
    log_probs = torch.log_softmax(predicted, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return log_probs.masked_fill(targets == -100, 0.0)


@torch.no_grad()
def mean_loss(
    model: Any, tokenizer: Any, examples: Sequence[Example], *, max_length: int = 64, batch_size: int = 16
) -> float:
    """Mean cross-entropy per target token over ``examples``, on held-out rows.

    A target with no context is scored from its second token on, so a bare model and a prompted one are scored on
    the same tokens (training also scores the first one, from the prompt)."""
    if not examples:
        raise InvalidConfigError("No held-out examples to evaluate.")
    pad_id = pad_token_id(tokenizer)
    total, count = 0.0, 0
    for chunk in _batches(examples, batch_size):
        batch = collate([encode(tokenizer, example, max_length) for example in chunk], pad_id)
        total -= float(_token_log_probs(model, batch).sum())
        count += int((batch["labels"][:, 1:] != -100).sum())
    if not count:
        raise InvalidConfigError("Every held-out text is a single token: the loss scores each token after the first.")
    return total / count


@torch.no_grad()
def choose(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    choices: Sequence[str],
    *,
    max_length: int = 64,
    batch_size: int = 16,
) -> list[int]:
    """For each context, the index of the choice with the highest log-likelihood (the sum over its tokens)."""
    if len(choices) < 2:
        raise InvalidConfigError(f"Choosing needs at least two choices, got {list(choices)}.")
    if not all(context.strip() for context in contexts):
        raise InvalidConfigError("Every example needs a non-empty text before its label.")
    pad_id = pad_token_id(tokenizer)
    choice_ids = [tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in choices]
    if all(len(ids) == 1 for ids in choice_ids):  # one token each: one pass per context scores every choice
        return _choose_single_tokens(model, tokenizer, contexts, [ids[0] for ids in choice_ids], max_length, batch_size)
    pairs = [Example(context, choice) for context in contexts for choice in choices]
    scores = []
    for chunk in _batches(pairs, batch_size):
        batch = collate([encode(tokenizer, pair, max_length) for pair in chunk], pad_id)
        scores.append(_token_log_probs(model, batch).sum(dim=1).cpu())
    table = torch.cat(scores).view(len(contexts), len(choices))
    return table.argmax(dim=1).tolist()


def accuracy(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    choices: Sequence[str],
    *,
    max_length: int = 64,
    batch_size: int = 16,
) -> float:
    """Share of ``examples`` whose target is the choice the model scores highest."""
    unknown = sorted({example.target for example in examples} - set(choices))
    if unknown:
        raise InvalidConfigError(f"Targets {unknown} are not among the choices {list(choices)}.")
    picked = choose(
        model, tokenizer, [e.context for e in examples], choices, max_length=max_length, batch_size=batch_size
    )
    return sum(choices[i] == e.target for i, e in zip(picked, examples, strict=True)) / len(examples)


def _choose_single_tokens(
    model: Any, tokenizer: Any, contexts: Sequence[str], choice_ids: list[int], max_length: int, batch_size: int
) -> list[int]:
    """What the pairwise scoring gives when every choice is one token, from one forward pass per context."""
    pad_id, picked = pad_token_id(tokenizer), []
    for chunk in _batches(contexts, batch_size):
        rows = [tokenizer(context, add_special_tokens=False)["input_ids"][: max_length - 1] for context in chunk]
        lengths = torch.tensor([len(ids) for ids in rows])
        batch = collate([(ids, ids) for ids in rows], pad_id)
        last = _text_logits(model, batch)[torch.arange(len(rows)), lengths - 1]
        picked += last[:, choice_ids].argmax(dim=1).tolist()
    return picked
