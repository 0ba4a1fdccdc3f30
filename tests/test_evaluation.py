"""Held-out evaluation: the loss and the label choice score exactly what the model computes, padding or not."""

from __future__ import annotations

import pytest
import torch
from peft import PromptTuningConfig, get_peft_model
from tiny_models import make_model

from peft_ext import SoftPromptConfig
from peft_ext.errors import InvalidConfigError
from peft_ext.evaluation import Example, accuracy, choose, encode, mean_loss

EXAMPLES = [
    Example("i want you to act as a", " coach"),
    Example("dream a great", " dream always"),
    Example("there are two nice things that should matter to", " you"),
]
CHOICES = [" positive", " negative", " neutral"]


def _models():
    soft = SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, init="vocab", init_seed=0)
    stock = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    return {
        "bare": make_model(),
        "soft prompt": get_peft_model(make_model(), soft).eval(),
        "PEFT prompt tuning": get_peft_model(make_model(), stock).eval(),
    }


def _own_loss(model, tokenizer, example: Example) -> tuple[float, int]:
    """The model's own loss on one unpadded row, and the number of tokens it scored."""
    ids, labels = encode(tokenizer, example, max_length=64)
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    return float(loss), sum(label != -100 for label in labels[1:])


@pytest.mark.parametrize("kind", ["bare", "soft prompt", "PEFT prompt tuning"])
def test_mean_loss_of_a_padded_batch_is_the_token_weighted_mean_of_each_row_alone(tiny_tokenizer, kind):
    model = _models()[kind]
    alone = [_own_loss(model, tiny_tokenizer, example) for example in EXAMPLES]
    expected = sum(loss * count for loss, count in alone) / sum(count for _, count in alone)
    assert mean_loss(model, tiny_tokenizer, EXAMPLES, batch_size=3) == pytest.approx(expected, rel=1e-5)
    assert mean_loss(model, tiny_tokenizer, EXAMPLES, batch_size=1) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["bare", "soft prompt"])
def test_single_token_choices_pick_what_the_pairwise_loss_picks(tiny_tokenizer, kind):
    model = _models()[kind]
    contexts = ["i want you to act as a", "dream a great dream", "hello world", "be kind always"]
    picked = choose(model, tiny_tokenizer, contexts, CHOICES, batch_size=3)
    for context, index in zip(contexts, picked, strict=True):
        losses = [mean_loss(model, tiny_tokenizer, [Example(context, choice)]) for choice in CHOICES]
        assert index == losses.index(min(losses))


def test_multi_token_choices_are_scored_by_the_sum_over_their_tokens(tiny_tokenizer):
    model = _models()["soft prompt"]
    choices = [" good coach", " bad", " great nice things"]
    contexts = ["i want you to act as a", "hello world"]
    picked = choose(model, tiny_tokenizer, contexts, choices, batch_size=2)
    for context, index in zip(contexts, picked, strict=True):
        totals = []
        for choice in choices:
            loss, count = _own_loss(model, tiny_tokenizer, Example(context, choice))
            totals.append(loss * count)
        assert index == totals.index(min(totals))


def test_accuracy_counts_the_examples_whose_target_scores_highest(tiny_tokenizer):
    model = _models()["bare"]
    contexts = ["i want you to act as a", "dream a great dream", "hello world"]
    picked = choose(model, tiny_tokenizer, contexts, CHOICES)
    examples = [Example(contexts[0], CHOICES[picked[0]])] + [
        Example(context, CHOICES[(index + 1) % 3]) for context, index in zip(contexts[1:], picked[1:], strict=True)
    ]
    assert accuracy(model, tiny_tokenizer, examples, CHOICES) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("examples", "choices", "message"),
    [
        ([Example("hello world", " maybe")], CHOICES, "not among the choices"),
        ([Example("hello world", " positive")], [" positive"], "at least two choices"),
        ([Example(" ", " positive")], CHOICES, "non-empty text"),
    ],
)
def test_bad_evaluation_input_is_a_named_error(tiny_tokenizer, examples, choices, message):
    with pytest.raises(InvalidConfigError, match=message):
        accuracy(make_model(), tiny_tokenizer, examples, choices)


def test_no_examples_and_empty_targets_are_named_errors(tiny_tokenizer):
    with pytest.raises(InvalidConfigError, match="No held-out examples"):
        mean_loss(make_model(), tiny_tokenizer, [])
    with pytest.raises(InvalidConfigError, match="no tokens"):
        mean_loss(make_model(), tiny_tokenizer, [Example("hello", "")])
    with pytest.raises(InvalidConfigError, match="single token"):
        mean_loss(make_model(), tiny_tokenizer, [Example("", "hello")])
