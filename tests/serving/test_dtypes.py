"""Serving in a lower precision: the exactness contract holds per dtype. With the base model in bfloat16, every row of
a mixed, continuously batched run (input-level prompts, a deep prompt, the bare base) is bit-identical to the same
request sent alone to a bfloat16 server (tokens and logprobs), and alone it answers as the bfloat16 model's own
generate. The server's linears run reordered for oneDNN (``pack_linears``, as ``peft-ext serve`` does); bfloat16
results are bit-identical to the plain model's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from serving_testutils import make_serving_tokenizer, prompt_tensor, reference
from tiny_models import make_model
from torch.nn.attention import SDPBackend, sdpa_kernel

from peft_ext import SoftPromptConfig
from peft_ext.base_models import load_base_model, resolve_dtype
from peft_ext.engine.packed_linear import can_pack, pack_linears, unpack_linears
from peft_ext.errors import InvalidConfigError
from peft_ext.serving.sampling import SamplingParams
from peft_ext.serving.service import Service

TEXTS = ["the coach motivate you", "hello world", "i want you to act as a good coach", "be kind always smile"]
MODELS = ["tiny", "p0", "p1", "deep"]
MAX_TOKENS = 12


def bfloat16_service(deep: Path, packed: bool = True) -> Service:
    """The tiny Llama loaded in bfloat16 as ``peft-ext serve --dtype bfloat16`` loads a base (its rotary frequencies
    stay float32, its linears packed where the CPU computes in bfloat16), with two input-level prompts and a deep
    one."""
    model, _, _ = load_base_model(str(deep.parent / "base"), dtype=torch.bfloat16, show_progress=False)
    if packed:
        pack_linears(model)
    service = Service(model, make_serving_tokenizer(), base_name="tiny")
    service.add("p0", prompt_tensor(0, length=3))
    service.add("p1", prompt_tensor(1, length=6))
    service.add("deep", deep)
    return service


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = SoftPromptConfig(task_type="CAUSAL_LM", placement="deep", num_virtual_tokens=3, init="vocab", init_seed=4)
    folder = Path(tmp_path_factory.mktemp("dtypes")) / "deep"
    get_peft_model(make_model("llama"), config).save_pretrained(folder)  # trained in float32, served in bfloat16
    make_model("llama").save_pretrained(folder.parent / "base")
    make_serving_tokenizer().save_pretrained(folder.parent / "base")
    return folder


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "plain"])
def test_every_row_of_a_bfloat16_batch_equals_the_request_alone(deep: Path, packed: bool) -> None:
    """All requests are queued at once, so they run as one batch of mixed prompts and lengths, joining at different
    steps; each one's tokens and logprobs are bit-identical to the same request sent alone to a bfloat16 server."""
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=1)
    mixed, alone = bfloat16_service(deep, packed), bfloat16_service(deep, packed)
    try:
        runs = {
            (name, text): mixed.start(mixed.lookup(name), [mixed.encode_text(text)], params)
            for name in MODELS
            for text in TEXTS
        }
        together = {key: run.wait()[0] for key, run in runs.items()}
        mixed.shutdown()  # one decoding thread at a time: concurrent ones share the CPU's threads
        for (name, text), choice in together.items():
            (single,) = alone.start(alone.lookup(name), [alone.encode_text(text)], params).wait()
            assert choice.tokens == single.tokens, (name, text)
            assert len(single.tokens) == MAX_TOKENS or single.finish_reason == "stop"
    finally:
        mixed.shutdown(drain=False)
        alone.shutdown(drain=False)


def test_the_bfloat16_server_answers_as_the_bfloat16_model(deep: Path) -> None:
    """Alone, a request's greedy tokens are those of the plain bfloat16 model's own generate with that prompt (with
    the attention kernel the server uses in half precision), its linears unpacked."""
    service = bfloat16_service(deep)
    try:
        params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
        served = {
            (name, text): service.start(service.lookup(name), [service.encode_text(text)], params).wait()[0]
            for name in MODELS
            for text in TEXTS
        }
        service.shutdown()
        assert unpack_linears(service.prompts.engine.model) == (7 * 2 + 1 if can_pack(torch.bfloat16) else 0)
        for (name, text), choice in served.items():
            with sdpa_kernel(SDPBackend.MATH):
                expected, finish = reference(service, name, service.encode_text(text), MAX_TOKENS)
            agree = [t.id for t in choice.tokens][: len(expected)] == expected
            assert agree and choice.finish_reason == finish, (name, text)
    finally:
        service.shutdown(drain=False)


def test_resolve_dtype() -> None:
    assert resolve_dtype("float32") is torch.float32 and resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("auto") in (torch.float32, torch.bfloat16)
    with pytest.raises(InvalidConfigError, match="float32, bfloat16, float16 or auto"):
        resolve_dtype("fp8")
