"""Linears packed for oneDNN (what ``peft-ext serve`` runs): bfloat16 results bit-identical to ``F.linear``, float32
within rounding, every row the same whatever the other rows; same parameters and state dict; gradients and in-place
weight changes still honoured; reversible."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_model
from torch import nn
from torch.nn import functional

from peft_ext.engine.packed_linear import MIN_FLOAT32_ROWS, PackedLinear, can_pack, pack_linears, unpack_linears

needs_bf16 = pytest.mark.skipif(not can_pack(torch.bfloat16), reason="this CPU has no native bfloat16")


def linear(dtype: torch.dtype, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(96, 80, bias=bias).to(dtype)


@needs_bf16
@pytest.mark.parametrize("shape", [(1, 96), (3, 96), (16, 96), (41, 96), (2, 7, 96)])
def test_bfloat16_equals_f_linear_bit_for_bit(shape: tuple[int, ...]) -> None:
    plain = linear(torch.bfloat16)
    inputs = torch.randn(shape).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(PackedLinear(plain)(inputs), functional.linear(inputs, plain.weight, plain.bias))


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)])
def test_every_row_is_the_same_whatever_the_other_rows(dtype: torch.dtype) -> None:
    packed = PackedLinear(linear(dtype))
    inputs = torch.randn(40, 96).to(dtype)
    with torch.no_grad():
        whole = packed(inputs)
        for rows in (1, 2, MIN_FLOAT32_ROWS, 9, 16, 17, 33):
            start = 40 - rows
            assert torch.allclose(packed(inputs[start:]), whole[start:], atol=1e-5, rtol=0)
            if rows >= MIN_FLOAT32_ROWS or dtype == torch.bfloat16:
                assert torch.equal(packed(inputs[start:]), whole[start:]), rows


def test_float32_below_the_threshold_is_f_linear_and_above_within_rounding() -> None:
    plain = linear(torch.float32)
    packed = PackedLinear(plain)
    with torch.no_grad():
        few = torch.randn(MIN_FLOAT32_ROWS - 1, 96)
        assert torch.equal(packed(few), functional.linear(few, plain.weight, plain.bias))
        many = torch.randn(24, 96)
        assert torch.allclose(packed(many), functional.linear(many, plain.weight, plain.bias), atol=1e-5, rtol=0)


def test_gradients_flow_as_through_nn_linear() -> None:
    plain = linear(torch.float32)
    packed = PackedLinear(plain)
    inputs = torch.randn(8, 96, requires_grad=True)
    packed(inputs).square().sum().backward()
    grads = plain.weight.grad.clone(), inputs.grad.clone()
    plain.weight.grad, inputs.grad = None, None
    functional.linear(inputs, plain.weight, plain.bias).square().sum().backward()
    assert torch.equal(grads[0], plain.weight.grad) and torch.equal(grads[1], inputs.grad)


def test_a_weight_changed_in_place_is_packed_again() -> None:
    plain = linear(torch.float32, bias=False)
    packed = PackedLinear(plain)
    inputs = torch.randn(8, 96)
    with torch.no_grad():
        before = packed(inputs)
        plain.weight.mul_(2)
        after = packed(inputs)
    assert torch.allclose(after, 2 * before, atol=1e-5, rtol=0)
    assert torch.allclose(after, functional.linear(inputs, plain.weight), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)])
def test_pack_linears_keeps_the_parameters_and_unpack_restores_the_model(dtype: torch.dtype) -> None:
    model = make_model("llama").to(dtype).eval()
    ids = torch.tensor([[1, 5, 9, 4, 2, 7, 3]])
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    with torch.no_grad():
        expected = model(ids).logits
        assert pack_linears(model) == len(linears) > 0
        assert not any(type(m) is nn.Linear for m in model.modules())
        assert model.state_dict().keys() == state.keys()
        assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())
        packed = model(ids).logits
        assert torch.allclose(packed, expected, atol=1e-4, rtol=0)
        if dtype == torch.bfloat16:
            assert torch.equal(packed, expected)
        assert unpack_linears(model) == len(linears)
        assert sum(type(m) is nn.Linear for m in model.modules()) == len(linears)
        assert torch.equal(model(ids).logits, expected)


def test_tied_weights_stay_tied() -> None:
    model = make_model("gpt2").eval()
    assert model.lm_head.weight is model.get_input_embeddings().weight
    pack_linears(model)
    assert isinstance(model.lm_head, PackedLinear)
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_nothing_is_packed_where_it_would_not_be_faster() -> None:
    model = make_model("llama").to(torch.float16)
    assert not can_pack(torch.float16)
    assert pack_linears(model) == 0
