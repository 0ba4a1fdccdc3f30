"""The continuous batch's cache, written in place: rows joining longer or shorter than the others, leaving from the
middle, and more decoding steps than the spare columns, each row's tokens those of the same request alone; the in-place
cache and a cache rebuilt every step (what sliding-window models get) give the same logits."""

from __future__ import annotations

import random

import pytest
import torch
from tiny_models import make_model

from peft_ext import MultiPromptModel
from peft_ext.engine.decode_batch import SPARE_COLUMNS, SPARE_ROWS, DecodeBatch, Joining
from peft_ext.engine.packed_linear import pack_linears
from peft_ext.errors import InvalidRequestError

PROMPTS = {"a": 3, "b": 6}


@pytest.fixture(scope="module")
def served() -> MultiPromptModel:
    served = MultiPromptModel(make_model("llama"))
    for index, (name, length) in enumerate(PROMPTS.items()):
        served.add(name, torch.randn(length, 32, generator=torch.Generator().manual_seed(index)) * 0.5)
    return served


def alone(served: MultiPromptModel, prompt: str | None, input_ids: list[int], new_tokens: int) -> list[int]:
    output = served.generate(torch.tensor([input_ids]), [prompt], max_new_tokens=new_tokens, do_sample=False)
    return output[0, len(input_ids) :].tolist()


def schedule(seed: int) -> list[tuple[int, str | None, list[int], int]]:
    """Requests as (join step, prompt, input ids, new tokens): inputs of 1 to 20 tokens, some long enough to outlast
    the spare columns, joining while others run."""
    rng = random.Random(seed)
    requests = []
    for index in range(SPARE_ROWS + 4):  # more rows than the first allocation holds
        length, new_tokens = rng.randint(1, 20), rng.choice([1, 3, 8, SPARE_COLUMNS + 10])
        ids = [rng.randint(4, 60) for _ in range(length)]
        requests.append((rng.randint(0, 12) if index else 0, rng.choice([None, "a", "b"]), ids, new_tokens))
    return requests


@pytest.mark.parametrize("seed", [0, 1])
def test_rows_joining_and_leaving_decode_as_each_alone(served: MultiPromptModel, seed: int) -> None:
    requests = schedule(seed)
    batches = [DecodeBatch(served.engine, in_place=True), DecodeBatch(served.engine, in_place=False)]
    made: dict[int, list[int]] = {}
    finished: set[int] = set()
    step = 0
    while len(finished) < len(requests):
        for index, (start, prompt, ids, _) in enumerate(requests):
            if start == step:
                logits = [b.join(index, served.row_prompt(prompt) if prompt else None, ids) for b in batches]
                torch.testing.assert_close(logits[0], logits[1])
                made[index] = [int(logits[0].argmax())]
        done = [i for i in batches[0].ids if len(made[i]) == requests[i][3]]  # type: ignore[index]
        finished.update(done)  # type: ignore[arg-type]
        for batch in batches:
            batch.leave(done)
        assert batches[0].ids == batches[1].ids and batches[0].length == batches[1].length
        if batches[0].ids:
            tokens = [made[i][-1] for i in batches[0].ids]  # type: ignore[index]
            logits = [batch.step(tokens) for batch in batches]
            torch.testing.assert_close(logits[0], logits[1])
            for row, index in enumerate(batches[0].ids):
                made[index].append(int(logits[0][row].argmax()))  # type: ignore[index]
        step += 1
    for index, (_, prompt, ids, new_tokens) in enumerate(requests):
        assert made[index] == alone(served, prompt, ids, new_tokens), index


def test_a_failed_step_leaves_the_batch_as_it_was(served: MultiPromptModel) -> None:
    batch = DecodeBatch(served.engine)
    first = int(batch.join("r", None, [5, 6, 7]).argmax())
    length = batch.length
    with pytest.raises(IndexError):
        batch.step([10**6])  # an id outside the vocabulary fails inside the model
    assert batch.length == length
    tokens = [first]
    for _ in range(4):
        tokens.append(int(batch.step([tokens[-1]])[0].argmax()))
    assert tokens == alone(served, None, [5, 6, 7], 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_rows_prefilled_together_compute_what_each_does_alone(dtype: torch.dtype) -> None:
    """``join_all``: rows of prompts of equal and different lengths, texts of different lengths, some wanting the
    logits after every input token, prefilled together; each row's logits and its following steps are those of the
    same rows joined one at a time (bit-identical in bfloat16, with the server's packed linears)."""
    model = make_model("llama").to(dtype)
    pack_linears(model)
    served = MultiPromptModel(model)
    for index, length in enumerate((3, 3, 6)):
        served.add(f"p{index}", (torch.randn(length, 32, generator=torch.Generator().manual_seed(index)) * 0.5))
    rng = random.Random(7)
    rows = [
        Joining(index, served.row_prompt(name) if name else None, [rng.randint(4, 60) for _ in range(length)], echo)
        for index, (name, length, echo) in enumerate(
            [("p0", 5, False), (None, 1, False), ("p1", 9, True), ("p2", 2, False), (None, 12, False), ("p0", 5, True)]
            + [("p2", 7, False), ("p1", 1, False)]
        )
    ]
    together, one_by_one = DecodeBatch(served.engine), DecodeBatch(served.engine)
    joined = together.join_all(rows)
    single = [one_by_one.join(row.row_id, row.prompt, row.input_ids, row.every_position) for row in rows]
    assert together.ids == one_by_one.ids == [row.row_id for row in rows]

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:  # float32: within rounding (another summation order)
        return torch.equal(a, b) if dtype == torch.bfloat16 else torch.allclose(a, b, atol=1e-5, rtol=0)

    for row, mine, its_own in zip(rows, joined, single, strict=True):
        assert mine.shape == its_own.shape == ((len(row.input_ids), 64) if row.every_position else (64,))
        assert same(mine, its_own), row.row_id
    tokens = [
        int((logits[-1] if row.every_position else logits).argmax()) for row, logits in zip(rows, single, strict=True)
    ]
    for _ in range(3):
        mine, its_own = together.step(tokens), one_by_one.step(tokens)
        assert same(mine, its_own)
        tokens = mine.argmax(-1).tolist()


def test_prefilling_together_refuses_a_repeated_or_running_row(served: MultiPromptModel) -> None:
    batch = DecodeBatch(served.engine)
    batch.join("r", None, [5, 6])
    for rows in ([Joining("r", None, [7])], [Joining("s", None, [7]), Joining("s", None, [8])]):
        with pytest.raises(InvalidRequestError, match="already running, or repeats"):
            batch.join_all(rows)
    with pytest.raises(InvalidRequestError, match="at least one input token"):
        batch.join_all([Joining("t", None, [])])
    assert batch.ids == ["r"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_rows_prefilled_in_chunks_compute_what_each_does_alone(dtype: torch.dtype) -> None:
    """``prefill`` in chunks of 5 tokens: rows of different prompts and input lengths (some wanting every position's
    logits) start at different calls and finish at different calls; each row's logits, and the steps after, are those
    of the row prefilled alone in the same chunks (bit-identical in bfloat16), and within rounding those of one whole
    prefill. A row forgotten mid-way leaves nothing behind."""
    model = make_model("llama").to(dtype)
    pack_linears(model)
    served = MultiPromptModel(model)
    for index, length in enumerate((3, 6)):
        served.add(f"p{index}", (torch.randn(length, 32, generator=torch.Generator().manual_seed(index)) * 0.5))
    rng = random.Random(3)
    specs = [
        ("p0", 12, False),
        (None, 3, False),
        ("p1", 23, True),
        (None, 17, False),
        ("p0", 5, False),
        ("p1", 9, True),
    ]
    rows = [
        Joining(index, served.row_prompt(name) if name else None, [rng.randint(4, 60) for _ in range(length)], echo)
        for index, (name, length, echo) in enumerate(specs)
    ]
    together = DecodeBatch(served.engine)
    together.prefill([Joining("gone", None, list(range(4, 20)))], chunk_tokens=5)
    assert together.prefilling == ["gone"]
    together.forget(["gone"])
    got: dict[int, torch.Tensor] = {}
    pending = rows[:3]
    for call in range(6):
        pending += rows[3:] if call == 1 else []  # the others start one call later
        for row, logits in zip(pending, together.prefill(pending, chunk_tokens=5), strict=True):
            if logits is not None:
                got[row.row_id] = logits
        pending = [row for row in pending if row.row_id not in got]
    assert not pending and not together.prefilling and sorted(together.ids) == list(range(len(rows)))

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.equal(a, b) if dtype == torch.bfloat16 else torch.allclose(a, b, atol=1e-5, rtol=0)

    one_by_one, whole = DecodeBatch(served.engine), DecodeBatch(served.engine)
    by_id = {row.row_id: row for row in rows}
    for row_id in together.ids:  # the order the rows joined
        row = by_id[row_id]
        while (alone := one_by_one.prefill([row], chunk_tokens=5)[0]) is None:
            pass
        assert same(got[row_id], alone), row_id
        at_once = whole.join(row.row_id, row.prompt, row.input_ids, row.every_position)
        assert torch.allclose(got[row_id].float(), at_once.float(), atol=1e-5 if dtype == torch.float32 else 0.1)
    tokens = [int((got[i][-1] if by_id[i].every_position else got[i]).argmax()) for i in together.ids]
    for _ in range(3):
        mine, its_own = together.step(tokens), one_by_one.step(tokens)
        assert same(mine, its_own)
        tokens = mine.argmax(-1).tolist()
