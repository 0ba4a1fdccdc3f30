"""Fixtures over the tiny models of the three position schemes (Llama: RoPE, GPT-2: absolute, Bloom: ALiBi).

The models and tokenizer themselves are built in tiny_models.py; import helpers from there (``from tiny_models import
make_model``), never from a conftest.py (tests/hub_tests has its own conftest.py, and both are imported by pytest
under the module name ``conftest``).

Also the suite's rules for a busy machine and a moving dependency set: Hypothesis runs without deadlines or speed
health checks (a loaded 2-core machine is slow, not wrong), and a deprecation warning caused by a call in
``peft_ext`` or ``hub`` fails the test that triggered it (``deprecations.py``).
"""

from __future__ import annotations

import pytest
from deprecations import fail_on_our_deprecations
from hypothesis import HealthCheck, settings
from tiny_models import FAMILIES, make_tokenizer
from transformers import PreTrainedTokenizerFast

import peft_ext  # noqa: F401  (registers SOFT_PROMPT)

settings.register_profile(
    "peft-ext", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile("peft-ext")


@pytest.fixture(autouse=True)
def _no_deprecated_calls_from_our_code() -> object:
    with fail_on_our_deprecations():
        yield


@pytest.fixture(params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()
