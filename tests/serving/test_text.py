"""Incremental detokenisation and stop strings: the pieces put together are the text decoded at once (cut before
the first stop string), whatever the token boundaries: multi-byte characters and context-dependent spaces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from peft_ext.serving.text import TextStream

CORPUS = ["hello world, héllo wörld", "smile 🙂 always", "中文 字符 and ascii", "naïve café résumé"] * 20
ALPHABET = "ab hélo wörd🙂中文字,."


def _trained(pre_tokenizer: object, decoder: object, **extra: object) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer  # type: ignore[assignment]
    backend.decoder = decoder  # type: ignore[assignment]
    trainer = trainers.BpeTrainer(vocab_size=200, show_progress=False, **extra)  # type: ignore[arg-type]
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend)


@pytest.fixture(scope="module")
def byte_level() -> PreTrainedTokenizerFast:
    """GPT-2 style: bytes, so one character may take several tokens."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    return _trained(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(), initial_alphabet=alphabet)


@pytest.fixture(scope="module")
def metaspace() -> PreTrainedTokenizerFast:
    """SentencePiece style: a word's space is part of its token, and dropped when decoded at the start."""
    return _trained(pre_tokenizers.Metaspace(), decoders.Metaspace())


def _pieces(stream: TextStream, ids: list[int]) -> list[str]:
    return [stream.push(i) for i in ids] + [stream.finish()]


@given(text=st.text(alphabet=ALPHABET, max_size=40))
def test_pieces_make_the_whole_text(byte_level: PreTrainedTokenizerFast, text: str) -> None:
    ids = byte_level(text)["input_ids"]
    pieces = _pieces(TextStream(byte_level), ids)
    assert "".join(pieces) == byte_level.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)  # a split character waits for its last byte


def test_a_character_split_over_tokens_comes_out_whole(byte_level: PreTrainedTokenizerFast) -> None:
    ids = byte_level("🙂")["input_ids"]
    assert len(ids) > 1  # the emoji's four bytes are not one token of this small vocabulary
    stream = TextStream(byte_level)
    assert [stream.push(i) for i in ids] == [""] * (len(ids) - 1) + ["🙂"]


def test_the_first_token_keeps_its_space_after_the_prompt(metaspace: PreTrainedTokenizerFast) -> None:
    prompt = metaspace("hello")["input_ids"]
    ids = metaspace("hello world")["input_ids"]
    assert ids[: len(prompt)] == prompt
    answer = ids[len(prompt) :]
    assert "".join(_pieces(TextStream(metaspace, prompt), answer)) == " world"
    assert metaspace.decode(answer) == "world"  # decoded alone, the space would be lost


@given(text=st.text(alphabet=ALPHABET, min_size=1, max_size=40), data=st.data())
def test_the_text_ends_before_the_first_stop_string(
    byte_level: PreTrainedTokenizerFast, text: str, data: st.DataObject
) -> None:
    start = data.draw(st.integers(0, len(text) - 1))
    stop = text[start : data.draw(st.integers(start + 1, len(text)))]
    other = data.draw(st.text(alphabet=ALPHABET, min_size=1, max_size=3))
    stream = TextStream(byte_level, stop=[other, stop])
    ids, pieces = byte_level(text)["input_ids"], []
    for token in ids:
        stopped = stream.stopped
        pieces.append(stream.push(token))
        assert not (stopped and pieces[-1])  # nothing comes after a stop string
    pieces.append(stream.finish())
    # The first stop string to appear as the tokens come ends the text, which is cut where that string starts.
    prefixes = (byte_level.decode(ids[:k]) for k in range(1, len(ids) + 1))
    so_far = next(t for t in prefixes if stop in t or other in t)
    cut = min(i for i in (so_far.find(stop), so_far.find(other)) if i >= 0)
    assert "".join(pieces) == text[:cut] and stream.stopped


def test_text_that_may_start_a_stop_string_is_held_back(byte_level: PreTrainedTokenizerFast) -> None:
    stream = TextStream(byte_level, stop=["world!"])
    released = "".join(stream.push(i) for i in byte_level("hello wor")["input_ids"])
    assert released == "hello "  # "wor" may become "world!"
    released += "".join(stream.push(i) for i in byte_level("ld?")["input_ids"])
    assert released == "hello world?" and not stream.stopped
