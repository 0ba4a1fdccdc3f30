"""Training data: user files in four formats, packaged data, and one-line errors naming the file and line."""

from __future__ import annotations

import pytest

from peft_ext.cli.data import packaged_prompts, packaged_quotes, read_texts
from peft_ext.errors import DatasetError


def test_formats(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\nsecond line\n")
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n"two"\n\n{"text": "three"}\n')
    (tmp_path / "a.json").write_text('[{"quote": "q1"}, "q2"]')
    (tmp_path / "a.csv").write_text("author,quote\nme,hello there\nyou,\n")
    assert read_texts(tmp_path / "a.txt") == ["first line", "second line"]
    assert read_texts(tmp_path / "a.jsonl") == ["one", "two", "three"]
    assert read_texts(tmp_path / "a.json") == ["q1", "q2"]
    assert read_texts(tmp_path / "a.csv") == ["hello there"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"\n  \n", r"empty.txt: holds no text"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": \n', r"bad.jsonl, line 2: not valid JSON"),
        ("bad.json", b'[{"text": "ok"},\n oops]', r"bad.json, line 2: not valid JSON"),
        ("latin.txt", b"fine\ncaf\xe9\n", r"latin.txt, line 2: not valid UTF-8"),
        ("cols.csv", b"author,year\nme,2020\n", r"cols.csv, line 2: no text column"),
        ("cols.jsonl", b'{"author": "me"}\n', r"cols.jsonl, line 1: no text column"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        read_texts(tmp_path / name)


def test_explicit_column_must_exist(tmp_path):
    (tmp_path / "a.csv").write_text("quote\nhi\n")
    with pytest.raises(DatasetError, match="no column 'text'"):
        read_texts(tmp_path / "a.csv", text_column="text")


def test_packaged_data():
    prompts = packaged_prompts()
    assert len(prompts) > 100 and all(p.startswith("I want you to act as") for p in prompts)
    quotes = packaged_quotes(400)
    assert len(quotes) == 400 and " - " in quotes[0]
    # distinct: the demo holds some out, and a held-out quote must not also be a training one
    assert len(set(quotes)) == len(quotes)


def test_datasets_folder_and_missing_dataset(tmp_path, monkeypatch):
    from peft_ext.cli.data import load_texts

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"prompt": "act as a coach"}\n{"prompt": "act as a poet"}\n')
    assert load_texts(str(folder)) == ["act as a coach", "act as a poet"]
    with pytest.raises(DatasetError, match="could not be loaded"):
        load_texts(str(tmp_path / "no-such-dataset"))


def test_missing_data_file_is_not_looked_up_as_a_dataset(tmp_path):
    from peft_ext.cli.data import load_texts

    with pytest.raises(DatasetError, match=r"quotes.jsonl: no such file"):
        load_texts(str(tmp_path / "quotes.jsonl"))


def test_labelled_rows_from_jsonl_json_and_csv(tmp_path):
    from peft_ext.cli.data import read_labelled

    (tmp_path / "a.jsonl").write_text(
        '{"text": "great film", "label": "positive"}\n\n{"text": "dull", "label": "negative"}\n'
    )
    (tmp_path / "a.json").write_text('[{"review": "great film", "stars": 5}]')
    (tmp_path / "a.csv").write_text("text,label\ngreat film,positive\n")
    assert read_labelled(tmp_path / "a.jsonl", "label") == [("great film", "positive"), ("dull", "negative")]
    assert read_labelled(tmp_path / "a.json", "stars", text_column="review") == [("great film", "5")]
    assert read_labelled(tmp_path / "a.csv", "label") == [("great film", "positive")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.txt", "great film\n", r"a.txt: labelled data needs columns"),
        ("a.jsonl", '{"text": "great film"}\n', r"a.jsonl, line 1: no column 'label'"),
        ("b.jsonl", '{"text": "great film", "label": ""}\n', r"b.jsonl, line 1: needs both a text and a 'label'"),
        ("c.jsonl", '"great film"\n', r"c.jsonl, line 1: expected an object with a 'label' column"),
        ("b.csv", "text,label\n", r"b.csv: holds no labelled text"),
    ],
)
def test_bad_labelled_files_name_file_and_line(tmp_path, name, content, message):
    from peft_ext.cli.data import read_labelled

    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_labelled(tmp_path / name, "label")
