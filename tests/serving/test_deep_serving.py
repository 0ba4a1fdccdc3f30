"""A deep soft prompt from training to an HTTP answer: trained through PEFT, saved, pushed to a store, pulled by the
server on a request's version reference, and served over HTTP beside an input-level prompt and the bare base model.
Every concurrent answer equals the same request alone, and the deep prompt's answer equals the trained PeftModel's own
greedy ``generate``. ``peft-ext generate`` takes the same folder."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import openai
import pytest
import torch
from peft import get_peft_model
from serving_testutils import EOS, Gate, make_serving_tokenizer, prompt_tensor, reference, running, wait_for, words
from tiny_models import make_model

import hub
from peft_ext import SoftPromptConfig
from peft_ext.serving.cli import main
from peft_ext.serving.service import Service

REPO = "org/deep"
TEXTS = ["the coach motivate you", "i want you to act as a good coach", "hello world"]
MAX_TOKENS = 6


def _train_deep_prompt(folder: Path) -> torch.nn.Module:
    """A deep prompt trained a few steps on the tiny Llama to say 'be kind always smile'."""
    tokenizer = make_serving_tokenizer()
    config = SoftPromptConfig(task_type="CAUSAL_LM", placement="deep", num_virtual_tokens=3, init="vocab", init_seed=1)
    model = get_peft_model(make_model("llama"), config)
    ids = torch.tensor([tokenizer("hello world be kind always smile")["input_ids"]])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(10):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(folder)
    return model


def _own_generate(model: torch.nn.Module, text: str) -> list[int]:
    ids = torch.tensor([make_serving_tokenizer()(text)["input_ids"]])
    out = model.generate(input_ids=ids, max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=0)
    new = out[0, ids.shape[1] :].tolist()
    return new[: new.index(EOS)] if EOS in new else new


def test_a_deep_prompt_goes_from_training_to_http(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trained = _train_deep_prompt(tmp_path / "deep")
    store = hub.LocalStore(tmp_path / "store")
    tokenizer = make_serving_tokenizer()
    hub.push(tmp_path / "deep", REPO, task="kind", store=store, base_model=make_model("llama"), tokenizer=tokenizer)
    gate = Gate()
    service = Service(make_model("llama"), tokenizer, base_name="tiny", store=store, step_hook=gate)
    service.add("shallow", prompt_tensor(3, length=5))
    deep = f"{REPO}:kind@^1"
    with running(service) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        requests = [(model, text) for model in (deep, "shallow", "tiny") for text in TEXTS]
        gate.close()  # decoding waits until every request is in, so that they share the batch
        try:
            with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
                futures = [
                    pool.submit(client.completions.create, model=m, prompt=t, max_tokens=MAX_TOKENS, temperature=0)
                    for m, t in requests
                ]
                wait_for(
                    lambda: (s := service.scheduler.stats()).queued + s.running == len(requests),
                    "every request to be in",
                )
                gate.open()
                answers = [f.result() for f in futures]
        finally:
            gate.open()
        for (model, text), answer in zip(requests, answers, strict=True):
            ids = tokenizer(text)["input_ids"]
            tokens, finish = reference(service, model, ids, MAX_TOKENS)
            assert answer.choices[0].text.split() == words(tokenizer, tokens), (model, text)
            assert answer.choices[0].finish_reason == finish
            if model == deep:
                assert tokens == _own_generate(trained, text), text
        assert {m.id for m in client.models.list().data} >= {"tiny", "shallow", f"{REPO}:kind@1.0.0"}
    bare = [reference(service, "tiny", tokenizer(t)["input_ids"], MAX_TOKENS)[0] for t in TEXTS]
    assert [_own_generate(trained, t) for t in TEXTS] != bare  # the trained deep prompt changes the answers
    service.shutdown(drain=False)

    base_folder = tmp_path / "tiny-llama"
    make_model("llama").save_pretrained(base_folder)
    tokenizer.save_pretrained(base_folder)
    argv = ["generate", "--base", str(base_folder), "--prompt", str(tmp_path / "deep"), "--max-tokens", "6", *TEXTS]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split() for line in printed] == [words(tokenizer, _own_generate(trained, t)) for t in TEXTS]
