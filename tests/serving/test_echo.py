"""``echo`` on /v1/completions: the prompt's own tokens come back with their logprobs, as lm-evaluation-harness reads
them for every multiple-choice task (``local-completions``), for the base model, an input-level and a deep prompt.

The echoed logprobs are checked against the model's own forward for that prompt, computed here independently of the
server (the base model's logits with the prompt's vectors before the input, or PEFT's own forward of the deep
adapter); the generated token after them is the one the same request gets alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from peft import PeftModel, get_peft_model
from serving_testutils import make_serving_tokenizer, prompt_tensor, reference, running
from tiny_models import make_model

from peft_ext import SoftPromptConfig
from peft_ext.serving.server import Server
from peft_ext.serving.service import Service

INPUT_PROMPT = prompt_tensor(11, length=4)
TEXTS = ["the coach motivate you", "hello world"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def deep_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = SoftPromptConfig(task_type="CAUSAL_LM", placement="deep", num_virtual_tokens=3, init="vocab", init_seed=2)
    folder = tmp_path_factory.mktemp("echo") / "deep"
    get_peft_model(make_model("llama"), config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(deep_folder: Path) -> Iterator[Server]:
    service = Service(make_model("llama"), make_serving_tokenizer(), base_name="tiny")
    service.add("shallow", INPUT_PROMPT)
    service.add("deep", deep_folder)
    with running(service) as server:
        yield server


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=300) as client:
        yield client


def forward_logprobs(model_name: str, ids: list[int], deep_folder: Path) -> torch.Tensor:
    """``[len(ids), vocab]`` log-probabilities after each input token, from the model's own forward."""
    base = make_model("llama").eval()
    tensor = torch.tensor([ids])
    with torch.no_grad():
        if model_name == "tiny":
            logits = base(input_ids=tensor).logits[0]
        elif model_name == "shallow":
            embeds = torch.cat([INPUT_PROMPT[None], base.get_input_embeddings()(tensor)], dim=1)
            logits = base(inputs_embeds=embeds).logits[0, INPUT_PROMPT.shape[0] :]
        else:
            logits = PeftModel.from_pretrained(base, deep_folder).eval()(input_ids=tensor).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def completion(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/v1/completions", json={"temperature": 0, **body})
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.parametrize("model", ["tiny", "shallow", "deep"])
def test_echoed_logprobs_equal_the_models_forward(
    model: str, server: Server, http: httpx.Client, deep_folder: Path
) -> None:
    """lm-eval's own request (token-id prompts, max_tokens 1, logprobs 1, echo, seed 1234): every prompt token but the
    first has its logprob under the model's forward and the top alternative's; the token after is the greedy one."""
    tokenizer = make_serving_tokenizer()
    inputs = [tokenizer(text)["input_ids"] for text in TEXTS]
    body = completion(http, model=model, prompt=inputs, max_tokens=1, logprobs=1, echo=True, seed=1234)
    choices = sorted(body["choices"], key=lambda c: c["index"])
    assert len(choices) == len(inputs) and body["usage"]["prompt_tokens"] == sum(map(len, inputs))
    for ids, choice in zip(inputs, choices, strict=True):
        logprobs, expected = choice["logprobs"], forward_logprobs(model, ids, deep_folder)
        assert len(logprobs["tokens"]) == len(ids) + 1 == len(logprobs["token_logprobs"])
        assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
        for position, token in enumerate(ids[1:]):
            got, want = logprobs["token_logprobs"][position + 1], float(expected[position, token])
            assert abs(got - want) < TOLERANCE, (position, got, want)
            (top,) = logprobs["top_logprobs"][position + 1].values()
            assert abs(top - float(expected[position].max())) < TOLERANCE
        assert logprobs["tokens"][: len(ids)] == [tokenizer.decode([i]) for i in ids]
        generated, _ = reference(server.service, model, ids, 1)
        assert logprobs["tokens"][-1] == tokenizer.decode(generated)
        assert abs(logprobs["token_logprobs"][-1] - float(expected[-1].max())) < TOLERANCE
        assert choice["text"].startswith(tokenizer.decode(ids))


def test_max_tokens_0_scores_the_prompt_without_generating(http: httpx.Client, deep_folder: Path) -> None:
    body = completion(http, model="deep", prompt=TEXTS[0], max_tokens=0, logprobs=0, echo=True)
    (choice,) = body["choices"]
    ids = make_serving_tokenizer()(TEXTS[0])["input_ids"]
    assert choice["text"] == TEXTS[0] and choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    expected = forward_logprobs("deep", ids, deep_folder)
    scored = choice["logprobs"]["token_logprobs"]
    assert len(scored) == len(ids) and scored[0] is None
    assert all(abs(scored[i + 1] - float(expected[i, t])) < TOLERANCE for i, t in enumerate(ids[1:]))
    assert choice["logprobs"]["top_logprobs"][1:] == [{}] * (len(ids) - 1)  # logprobs 0: no alternatives


def test_echo_without_logprobs_gives_the_prompt_then_the_answer(http: httpx.Client) -> None:
    """Texts and n: each choice starts with its own input's text; the answer after it is the one without echo."""
    plain = completion(http, model="shallow", prompt=TEXTS, max_tokens=3, n=2, temperature=1, seed=7)
    echoed = completion(http, model="shallow", prompt=TEXTS, max_tokens=3, n=2, temperature=1, seed=7, echo=True)
    answers = {c["index"]: c["text"] for c in plain["choices"]}
    for choice in echoed["choices"]:
        text = TEXTS[choice["index"] // 2]
        assert choice["text"] == text + answers[choice["index"]] and choice["logprobs"] is None


def test_a_streamed_echo_is_the_whole_answer_in_pieces(http: httpx.Client) -> None:
    request = {"model": "shallow", "prompt": TEXTS[1], "max_tokens": 4, "logprobs": 2, "echo": True}
    whole = completion(http, **request)["choices"][0]
    with http.stream("POST", "/v1/completions", json={"temperature": 0, **request, "stream": True}) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    pieces = [json.loads(event)["choices"][0] for event in events[:-1]]
    assert "".join(piece["text"] for piece in pieces) == whole["text"]
    for field in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [v for piece in pieces for v in piece["logprobs"][field]] == whole["logprobs"][field], field
    assert pieces[0]["text"].startswith(TEXTS[1])


def test_text_offsets_count_the_echoed_prompt(http: httpx.Client) -> None:
    """Each token's offset is where its text starts in the choice's text, the prompt's tokens included."""
    choice = completion(http, model="tiny", prompt=[5, 6, 7], max_tokens=2, logprobs=0, echo=True)["choices"][0]
    tokens, offsets = choice["logprobs"]["tokens"], choice["logprobs"]["text_offset"]
    prompt_text = "".join(tokens[:3])
    assert offsets[:3] == [0, len(tokens[0]), len(tokens[0]) + len(tokens[1])]
    assert choice["text"].startswith(make_serving_tokenizer().decode([5, 6, 7]))
    assert offsets[2] <= len(prompt_text) <= offsets[3] + len(prompt_text)
