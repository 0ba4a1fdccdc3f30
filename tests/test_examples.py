"""Every script in examples/ runs end to end (its ``main``), on a tiny Llama saved to a folder, with 2 steps.

Each test checks what the example really did, independently of the example's own checks: the files it wrote (read
back here), and the answers and numbers it printed against a computation in the test. The reference for generated
text is ``_greedy``: plain transformers, the soft prompt read from the saved safetensors file and prepended to the
token embeddings at positions 0..n-1, one greedy token at a time without a cache. It shares no code with peft_ext.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from tiny_models import make_model
from transformers import LlamaForCausalLM

from hub import LocalStore, pull, versions
from hub.errors import BaseModelMismatchError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HIDDEN = 32  # conftest's tiny Llama
# "  [name] text -> 'answer'", as the examples print a row of a batch
ROW = re.compile(r"^\s*\[(?P<name>[^\]]+)\] (?P<text>.+?) -> (?P<answer>'.*'|\".*\")$", re.MULTILINE)
# "  [coach] step 1/2: loss 4.123", as plain_peft's training loop prints
STEP = re.compile(r"^\s*\[(?P<name>\w+)\] step (?P<step>\d+)/(?P<steps>\d+): loss (?P<loss>\S+)$", re.MULTILINE)


def _load(name: str):
    """Import ``examples/<name>.py`` by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# Seed of the tiny Llama: with it, every example's answers are non-empty and differ from prompt to prompt (with seed
# 0 most prompted answers are an immediate end of sequence, which would make comparing answers a weak check).
# ``_informative`` fails the tests if that stops being so.
MODEL_SEED = 2


@pytest.fixture
def tiny_model_folder(tmp_path, tiny_tokenizer) -> str:
    """A tiny Llama and its tokenizer saved as a local model folder, which ``load_base_model`` loads like any other."""
    folder = tmp_path / "tiny-llama"
    make_model("llama", seed=MODEL_SEED).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return str(folder)


def _run(name: str, folder: str, output: Path, *extra: str):
    """Run the example's ``main``; it must return exit code 0. Returns the module (for its constants)."""
    module = _load(name)
    assert module.main(["--model", folder, "--steps", "2", "--output", str(output), *extra]) == 0
    return module


def _base(folder: str) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(folder).eval()


def _prompt(adapter_folder: Path) -> torch.Tensor:
    tensors = load_file(adapter_folder / "adapter_model.safetensors")
    assert set(tensors) == {"prompt_embeddings"}
    prompt = tensors["prompt_embeddings"]
    assert prompt.ndim == 2 and prompt.shape[1] == HIDDEN and torch.isfinite(prompt).all()
    return prompt


def _greedy(
    base, tokenizer, prompt: torch.Tensor | None, text: str, max_new_tokens: int, repetition_penalty: float = 1.0
) -> str:
    """Greedy decoding of ``text`` after ``prompt`` (None: the bare base model), recomputed in full at every step.

    The repetition penalty follows its definition (CTRL; transformers' ``RepetitionPenaltyLogitsProcessor``): the
    logit of every token id seen so far in the text or the answer is divided by the penalty when positive and
    multiplied by it when negative.
    """
    ids = tokenizer(text)["input_ids"]
    eos = base.config.eos_token_id
    answer: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            embeds = base.get_input_embeddings()(torch.tensor([ids + answer]))
            if prompt is not None:
                embeds = torch.cat([prompt[None].to(embeds.dtype), embeds], dim=1)
            logits = base(inputs_embeds=embeds).logits[0, -1].clone()
            if repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(ids + answer)))
                scores = logits[seen]
                logits[seen] = torch.where(scores < 0, scores * repetition_penalty, scores / repetition_penalty)
            token = int(logits.argmax())
            answer.append(token)
            if token == eos:
                break
    return tokenizer.decode(answer, skip_special_tokens=True)


def _rows(printed: str) -> list[tuple[str, str, str]]:
    """Every ``[name] text -> 'answer'`` line printed, in order, as (name, text, answer)."""
    return [(m["name"], m["text"], ast.literal_eval(m["answer"])) for m in ROW.finditer(printed)]


def _check_text_init(adapter_folder: Path, tokenizer, base, init_text: str, length: int | None = None) -> None:
    """Saved with ``init_text``'s token ids (tokenised here; repeated to ``length`` if given), then trained."""
    config = json.loads((adapter_folder / "adapter_config.json").read_text())
    ids = tokenizer(init_text, add_special_tokens=False)["input_ids"]
    if length is not None:
        ids = (ids * length)[:length]
    assert config["peft_type"] == "SOFT_PROMPT" and config["init"] == "text" and config["init_text"] == init_text
    assert config["init_token_ids"] == ids and config["num_virtual_tokens"] == len(ids)
    prompt = _prompt(adapter_folder)
    assert prompt.shape == (len(ids), HIDDEN)
    init = base.get_input_embeddings().weight.detach()[ids]
    assert not torch.allclose(prompt, init), f"training did not move the prompt in {adapter_folder}"


def _informative(answers: list[str]) -> None:
    """The answers compared are non-empty and not all alike, so a wrong prompt would show in them."""
    assert all(answers) and len(set(answers)) == len(answers), answers


def _finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_every_example_has_a_test():
    tested = {"seed_reproduction", "plain_peft", "share_and_pin", "mixed_serving"}
    assert {path.stem for path in EXAMPLES.glob("*.py")} == tested


def test_seed_reproduction(tiny_model_folder, tmp_path, tiny_tokenizer, capsys):
    output = tmp_path / "out"
    example = _run("seed_reproduction", tiny_model_folder, output)
    printed = capsys.readouterr().out
    base = _base(tiny_model_folder)
    generation = example.GENERATION
    assert generation["do_sample"] is False

    # Trained for the 2 steps asked, with finite positive losses.
    trained = re.search(r"^trained (\d+) steps in \d+s, loss (\S+) -> (\S+)$", printed, re.MULTILINE)
    assert trained is not None, printed
    assert int(trained[1]) == 2 and _finite_positive(float(trained[2])) and _finite_positive(float(trained[3]))

    # Both adapters saved in <output>/<name>, with their text init, and trained.
    for name, init_text in example.INIT_TEXTS.items():
        _check_text_init(output / name, tiny_tokenizer, base, init_text)

    # The base model's answers before training are plain greedy decoding with the same settings.
    base_before = [ast.literal_eval(a) for a in re.findall(r"^\s+base model before: (.*)$", printed, re.MULTILINE)]
    assert base_before == [
        _greedy(base, tiny_tokenizer, None, text, generation["max_new_tokens"], generation["repetition_penalty"])
        for text in example.INPUTS
    ]

    # Served side by side in one batch: each row is what its saved prompt gives alone.
    served = _rows(printed.split("Served side by side in one batch:")[1])
    assert [(name, text) for name, text, _ in served] == list(zip(example.INIT_TEXTS, example.INPUTS, strict=True))
    for name, text, answer in served:
        expected = _greedy(
            base,
            tiny_tokenizer,
            _prompt(output / name),
            text,
            generation["max_new_tokens"],
            generation["repetition_penalty"],
        )
        assert answer == expected, (name, text)
    _informative([*base_before, *(answer for *_, answer in served)])


def test_plain_peft(tiny_model_folder, tmp_path, tiny_tokenizer, capsys):
    output = tmp_path / "out"
    example = _run("plain_peft", tiny_model_folder, output)
    printed = capsys.readouterr().out
    base = _base(tiny_model_folder)

    # Each adapter trained for the 2 steps asked, in order, with finite positive losses.
    steps = [(m["name"], int(m["step"]), int(m["steps"]), float(m["loss"])) for m in STEP.finditer(printed)]
    assert [(n, s, t) for n, s, t, _ in steps] == [("coach", 1, 2), ("coach", 2, 2), ("quotes", 1, 2), ("quotes", 2, 2)]
    assert all(_finite_positive(loss) for *_, loss in steps), steps

    # Saved in PEFT's layout with their text init: coach exactly its text, quotes its text repeated to 16 tokens.
    _check_text_init(
        output / "coach", tiny_tokenizer, base, "Write a prompt that tells an AI assistant which role to play:"
    )
    _check_text_init(output / "quotes", tiny_tokenizer, base, "Share an inspiring quote:", length=16)

    # The mixed batch: each row is what its saved prompt (or the bare base) gives alone; 20 greedy tokens.
    rows = _rows(printed)
    assert [(name, text) for name, text, _ in rows] == [
        ("coach", example.INPUTS[0]),
        ("quotes", example.INPUTS[1]),
        ("base model", example.INPUTS[1]),
    ]
    for name, text, answer in rows:
        prompt = None if name == "base model" else _prompt(output / name)
        assert answer == _greedy(base, tiny_tokenizer, prompt, text, 20), (name, text)
    _informative([answer for *_, answer in rows])

    # The stock export: a PROMPT_TUNING adapter holding exactly coach's final prompt, whose logits under stock PEFT
    # equal the reference (prompt embeddings prepended to the text's) here.
    stock = output / "coach-stock"
    stock_config = json.loads((stock / "adapter_config.json").read_text())
    coach = _prompt(output / "coach")
    assert stock_config["peft_type"] == "PROMPT_TUNING" and stock_config["num_virtual_tokens"] == coach.shape[0]
    assert torch.equal(_prompt(stock), coach)
    ids = torch.tensor([tiny_tokenizer(example.INPUTS[0])["input_ids"]])
    with torch.no_grad():
        reference = base(inputs_embeds=torch.cat([coach[None], base.get_input_embeddings()(ids)], dim=1)).logits
        theirs = PeftModel.from_pretrained(_base(tiny_model_folder), str(stock)).eval()(input_ids=ids).logits
    torch.testing.assert_close(theirs[:, -ids.shape[1] :], reference[:, -ids.shape[1] :], atol=1e-4, rtol=0)
    difference = float(printed.split("max logit difference ")[1].split()[0])
    assert difference < 1e-4


def test_share_and_pin(tiny_model_folder, tmp_path, tiny_tokenizer, capsys):
    store_root = tmp_path / "store"
    output = tmp_path / "out"
    example = _run("share_and_pin", tiny_model_folder, output, "--store-root", str(store_root))
    printed = capsys.readouterr().out
    store = LocalStore(store_root)
    repo, task = example.REPO, example.TASK
    base = _base(tiny_model_folder)

    # Two versions in the store named by --store-root: 1.0.0, then a minor bump, 1.1.0, yanked with its reason.
    listed = versions(repo, task, store=store)
    assert [(str(e.version), e.yanked) for e in listed] == [("1.0.0", False), ("1.1.0", True)]
    assert listed[1].yank_reason == "worse on held-out quotes"
    stored = {v: store_root / repo / task / v for v in ("1.0.0", "1.1.0")}

    # Each stored version: files whose hashes are those its manifest records, pinned to the tiny base model, with a
    # finite positive training loss. 1.0.0 holds the adapter saved in <output>/quotes-v1; 1.1.0 trained further.
    for version, folder in stored.items():
        manifest = json.loads((folder / "peft_ext_manifest.json").read_text())
        assert manifest["version"] == version and manifest["task"] == task
        for name, entry in manifest["files"].items():
            data = (folder / name).read_bytes()
            assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}, (version, name)
        # A local base folder is recorded by its name: the path would say where the pusher's files are.
        assert manifest["base_model"]["model_id"] == os.path.basename(tiny_model_folder)
        assert str(tmp_path) not in (folder / "peft_ext_manifest.json").read_text()
        assert _finite_positive(manifest["metrics"]["train_loss"])
    _check_text_init(output / "quotes-v1", tiny_tokenizer, base, "Share an inspiring quote:")
    assert torch.equal(_prompt(stored["1.0.0"]), _prompt(output / "quotes-v1"))
    assert not torch.allclose(_prompt(stored["1.1.0"]), _prompt(stored["1.0.0"])), "1.1.0 was not trained further"

    # What it printed: ^1.0 resolved to the newest version before the yank and to 1.0.0 after it.
    assert f"pushed {repo} {task} 1.0.0 ->" in printed and f"pushed {repo} {task} 1.1.0 (bump minor)" in printed
    assert "^1.0 resolves to 1.1.0: " in printed
    assert "after yanking 1.1.0, ^1.0 resolves to 1.0.0" in printed
    assert "refused on another base model: BaseModelMismatchError: " in printed

    # The answer it printed with the pulled prompt (then 1.1.0) is greedy decoding with 1.1.0's stored prompt.
    answer = ast.literal_eval(re.search(r"answer with the pulled prompt: (.*)$", printed, re.MULTILINE)[1])
    text = "There are two nice things that should matter to you:"
    assert answer == _greedy(base, tiny_tokenizer, _prompt(stored["1.1.0"]), text, 20)
    _informative([answer, _greedy(base, tiny_tokenizer, _prompt(stored["1.0.0"]), text, 20)])

    # The store it left behind works: ^1.0 now pulls 1.0.0's bytes, an exact pull still gets 1.1.0, and a base model
    # with other embeddings is refused.
    pulled = Path(pull(repo, task, "^1.0", base_model=base, tokenizer=tiny_tokenizer, store=store))
    assert torch.equal(_prompt(pulled), _prompt(stored["1.0.0"]))
    exact = Path(pull(repo, task, "1.1.0", base_model=base, tokenizer=tiny_tokenizer, store=store))
    assert torch.equal(_prompt(exact), _prompt(stored["1.1.0"]))
    other = _base(tiny_model_folder)
    with torch.no_grad():
        other.get_input_embeddings().weight.mul_(1.01)
    with pytest.raises(BaseModelMismatchError):
        pull(repo, task, "^1.0", base_model=other, tokenizer=tiny_tokenizer, store=store)


def test_mixed_serving(tiny_model_folder, tmp_path, tiny_tokenizer, capsys):
    output = tmp_path / "out"
    example = _run("mixed_serving", tiny_model_folder, output)
    printed = capsys.readouterr().out
    base = _base(tiny_model_folder)
    new_tokens = example.GENERATION["max_new_tokens"]
    assert example.GENERATION["do_sample"] is False

    # Both prompts saved with their text init and trained; the third prompt is the embeddings of a plain instruction.
    for name, init_text in example.INIT_TEXTS.items():
        _check_text_init(output / name, tiny_tokenizer, base, init_text)
    instruction = tiny_tokenizer("Answer in one short sentence.")["input_ids"]
    prompts = {
        "coach": _prompt(output / "coach"),
        "quotes": _prompt(output / "quotes"),
        "short": base.get_input_embeddings().weight.detach()[instruction],
        None: None,
    }
    lengths = [prompts[n].shape[0] for n in ("coach", "quotes", "short")]
    assert f"serving ['coach', 'quotes', 'short'], prompt shapes {[(n, HIDDEN) for n in lengths]}" in printed

    # The mixed batch: every row is what its prompt gives alone (reference decoding), the bare base for None.
    rows = _rows(printed)[:4]
    assert [(name, text) for name, text, _ in rows] == [
        ("coach", example.COACH_INPUT),
        ("quotes", example.QUOTE_INPUT),
        ("short", example.QUOTE_INPUT),
        ("base model", example.QUOTE_INPUT),
    ]
    for name, text, answer in rows:
        prompt = prompts[None if name == "base model" else name]
        assert answer == _greedy(base, tiny_tokenizer, prompt, text, new_tokens), (name, text)
    _informative([answer for *_, answer in rows])

    # using(): each thread's calls got that thread's prompt.
    for name, text in (("coach", example.COACH_INPUT), ("quotes", example.QUOTE_INPUT)):
        found = re.search(rf"^thread with using\('{name}'\): (.*)$", printed, re.MULTILINE)
        assert found is not None, printed
        assert ast.literal_eval(found[1]) == _greedy(base, tiny_tokenizer, prompts[name], text, new_tokens)

    # The KV cache: one entry and one miss per prompt; every later request with a prompt a hit (3 rows alone, 2
    # threads); its size is keys and values of every layer for every prompt token, in float32.
    config = base.config
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * (HIDDEN // config.num_attention_heads) * 4
    stats = re.search(r"^KVCacheStats\((.*)\)$", printed, re.MULTILINE)
    assert stats is not None, printed
    fields = dict(item.split("=") for item in stats[1].split(", "))
    assert int(fields["entries"]) == 3 and int(fields["misses"]) == 3 and int(fields["hits"]) == 5
    assert int(fields["evictions"]) == 0 and int(fields["bytes"]) == per_token * sum(lengths)

    # capacity=1: only the last prompt added stays loaded; a request for the other reloads it from its folder.
    assert "capacity=1: loaded ['quotes']; 'coach' still servable: True" in printed
    assert "after a request for 'coach': loaded ['coach']" in printed
