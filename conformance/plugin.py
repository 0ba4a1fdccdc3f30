"""pytest plugin that runs PEFT's own test suite as a conformance suite for ``SOFT_PROMPT``.

Loaded with ``-p conformance.plugin`` by ``conformance/run.py``; PEFT's test files are not edited. Modes
(``--conformance``):

* ``soft-prompt``: imports ``peft_ext``, adds ``SoftPromptConfig`` variants next to ``PromptTuningConfig`` in every
  config parametrization (and the Bloom stand-in next to PEFT's model ids), and runs only those new cases.
* ``stock``: adds nothing and runs the stock prompt-learning cases and ``test_config.py``, with ``peft_ext`` imported
  or not (``--with-peft-ext``), for the control run.

Every mode makes the tests offline: PEFT's ``hub_online_once`` would switch the Hub client online for a model's first
use, so its bookkeeping is told that every model was seen already; the English-quotes dataset becomes a small local one.
Outcomes per test id are written as JSON to ``--conformance-report``.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import sys
import tomllib
import types
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from conformance import stand_ins

EXPECTATIONS = Path(__file__).with_name("not_applicable.toml")
VARIANT_MARK = "soft_prompt_variant"
CONFIG_ARGNAMES = {"config_cls", "config_class"}
# Unparametrized tests that cover every registered PEFT method, so SOFT_PROMPT too once peft_ext is imported.
EVERY_METHOD_TESTS = {"tests/test_config.py::TestPeftConfig::test_from_peft_type"}


def soft_prompt_variants(tokenizer_folder: str) -> dict[str, dict[str, Any]]:
    """The SoftPromptConfig kwargs added beside PromptTuningConfig (as PEFT's tests pass them, with task_type)."""
    common = {"task_type": "CAUSAL_LM", "num_virtual_tokens": 10}
    return {
        "random_direct": {**common, "init": "random", "init_seed": 0},
        "mlp": {**common, "reparameterization": "mlp", "encoder_hidden_size": 32, "init_seed": 0},
        "text_anchors_residual": {
            **common,
            "init": "text",
            "init_text": "This is a test prompt.",
            "text_length_policy": "repeat",
            "tokenizer": tokenizer_folder,
            "num_anchor_tokens": 2,
            "reparameterization": "residual",
        },
        "vocab_lstm": {
            **common,
            "init": "vocab",
            "init_seed": 0,
            "reparameterization": "lstm",
            "encoder_hidden_size": 32,
        },
        # Deep prompts (keys/values in every layer): PEFT's prefix-tuning cases are the closest contract.
        "deep_vocab": {**common, "placement": "deep", "init": "vocab", "init_seed": 0},
        "deep_text_anchors": {
            **common,
            "placement": "deep",
            "init": "text",
            "init_text": "This is a test prompt.",
            "text_length_policy": "repeat",
            "tokenizer": tokenizer_folder,
            "num_anchor_tokens": 2,
        },
    }


def load_expectations() -> dict[str, list[dict[str, str]]]:
    with EXPECTATIONS.open("rb") as f:
        data = tomllib.load(f)
    return {"deselect": data.get("deselect", []), "not_applicable": data.get("not_applicable", [])}


def matching(nodeid: str, entries: list[dict[str, str]]) -> dict[str, str] | None:
    return next((e for e in entries if fnmatch.fnmatchcase(nodeid, e["pattern"])), None)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance")
    group.addoption("--conformance", choices=["soft-prompt", "stock"], required=True)
    group.addoption("--with-peft-ext", action="store_true", help="stock mode: import peft_ext first")
    group.addoption("--conformance-report", required=True, help="where to write the JSON outcomes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{VARIANT_MARK}(name): a SoftPromptConfig case added by the conformance plugin")
    if config.getoption("conformance") == "soft-prompt" or config.getoption("with_peft_ext"):
        import peft_ext  # noqa: F401  (registers SOFT_PROMPT)
    _stub_diffusers()
    config.stash[_recorder] = Recorder(config)
    config.pluginmanager.register(config.stash[_recorder], "conformance-recorder")


_recorder = pytest.StashKey["Recorder"]()


def _stub_diffusers() -> None:
    """testing_common.py imports ``diffusers`` only for ``isinstance(model, StableDiffusionPipeline)`` checks.

    When diffusers is not installed, a class nothing is an instance of gives those checks the answer they give for
    every decoder model, without adding diffusers (and its dependencies) to the environment.
    """
    if importlib.util.find_spec("diffusers") is None:
        module = types.ModuleType("diffusers")
        module.StableDiffusionPipeline = type("StableDiffusionPipeline", (), {})  # type: ignore[attr-defined]
        sys.modules["diffusers"] = module


# --- adding the variants ------------------------------------------------------------------------------------------


def _argnames(mark: pytest.Mark) -> list[str]:
    names = mark.args[0]
    return [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)


def _extended(mark: pytest.Mark) -> list[Any] | None:
    """The argvalues of ``mark`` with the SoftPrompt variants (or Bloom) appended, or None to leave it unchanged."""
    from peft import PromptTuningConfig

    from peft_ext import SoftPromptConfig

    names, values = _argnames(mark), list(mark.args[1])
    if len(names) == 2 and names[0] in CONFIG_ARGNAMES:
        if not any(isinstance(v, (tuple, list)) and v and v[0] is PromptTuningConfig for v in values):
            return None
        with_task_type = names[0] == "config_cls"  # test_config.py passes task_type itself
        variants = soft_prompt_variants(str(stand_ins.tokenizer_folder(Path(os.environ["HF_HUB_CACHE"]))))
        for name, kwargs in variants.items():
            if not with_task_type:
                kwargs = {k: v for k, v in kwargs.items() if k != "task_type"}
            mark_ = getattr(pytest.mark, VARIANT_MARK)(name)
            values.append(pytest.param(SoftPromptConfig, kwargs, id=f"SoftPromptConfig-{name}", marks=mark_))
        return values
    if names == ["model_id"] and "trl-internal-testing/tiny-random-LlamaForCausalLM" in values:
        return [*values, stand_ins.BLOOM_ID]
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.config.getoption("conformance") != "soft-prompt":
        return
    markers = metafunc.definition.own_markers
    for i, mark in enumerate(markers):
        if mark.name != "parametrize":
            continue
        values = _extended(mark)
        if values is not None:
            markers[i] = pytest.mark.parametrize(mark.args[0], values, **mark.kwargs).mark


# --- selecting and making offline ---------------------------------------------------------------------------------


def _is_stock_prompt_learning(item: pytest.Item) -> bool:
    from peft import PromptLearningConfig

    if Path(str(item.fspath)).name == "test_config.py":
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    config_cls = params.get("config_cls")
    if isinstance(config_cls, type):
        return issubclass(config_cls, PromptLearningConfig)
    return "prompt" in getattr(item, "originalname", item.name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    expectations = load_expectations()
    soft_prompt = config.getoption("conformance") == "soft-prompt"
    keep, drop = [], []
    meta = config.stash[_recorder].meta
    for item in items:
        variant = item.get_closest_marker(VARIANT_MARK)
        if soft_prompt:
            wanted = variant is not None or item.nodeid in EVERY_METHOD_TESTS
        else:
            wanted = _is_stock_prompt_learning(item)
        deselected = matching(item.nodeid, expectations["deselect"])
        if not wanted or deselected:
            drop.append(item)
            if wanted:
                meta[item.nodeid] = {"deselected": deselected["reason"]}  # type: ignore[index]
            continue
        keep.append(item)
        model_id = getattr(getattr(item, "callspec", None), "params", {}).get("model_id")
        meta[item.nodeid] = {
            "variant": variant.args[0] if variant else None,
            "model_id": model_id,
            "architecture": stand_ins.architecture(model_id) if model_id else "config",
        }
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
    _make_offline()


class _SeenEveryModel(defaultdict):
    """For PEFT's ``hub_online_once``: every model id counts as fetched already, so the Hub client stays offline."""

    def __contains__(self, key: object) -> bool:
        return True


def _english_quotes() -> Any:
    from datasets import Dataset, DatasetDict

    quotes = [" ".join(stand_ins.WORDS[i : i + 8]) for i in range(0, len(stand_ins.WORDS), 3)]
    return DatasetDict({"train": Dataset.from_dict({"quote": quotes})})


def _make_offline() -> None:
    for name, module in list(sys.modules.items()):
        if name.endswith("testing_utils") and hasattr(module, "_HUB_MODEL_ACCESSES"):
            module._HUB_MODEL_ACCESSES = _SeenEveryModel(int)
        if hasattr(module, "load_dataset_english_quotes") and name.startswith("tests."):
            module.load_dataset_english_quotes = _english_quotes


# --- recording outcomes -------------------------------------------------------------------------------------------


def _failure_details(report: pytest.TestReport) -> dict[str, Any]:
    longrepr: Any = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    details: dict[str, Any] = {"message": (crash.message if crash else str(longrepr))[:600]}
    entries = getattr(getattr(longrepr, "reprtraceback", None), "reprentries", [])
    locations = [e.reprfileloc for e in entries if getattr(e, "reprfileloc", None)]
    details["frames"] = [f"{loc.path}:{loc.lineno}" for loc in locations][-6:]
    return details


class Recorder:
    """Collects one outcome per test id: the call's, or the setup/teardown error or skip that replaced it."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.meta: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and report.outcome == "passed":
            return
        previous = self.outcomes.get(report.nodeid)
        if previous and previous["outcome"] in ("failed", "error"):
            return  # keep the first failure (a teardown error after a failed call adds nothing)
        outcome = report.outcome if report.when == "call" or report.outcome == "skipped" else "error"
        entry: dict[str, Any] = {"outcome": outcome, "duration": round(report.duration, 3)}
        if report.outcome == "failed":
            entry.update(_failure_details(report))
        elif report.outcome == "skipped" and isinstance(report.longrepr, tuple):
            entry["message"] = str(report.longrepr[2])
        self.outcomes[report.nodeid] = entry

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        result = {
            "mode": self.config.getoption("conformance"),
            "peft_ext_imported": "peft_ext" in sys.modules,
            "meta": self.meta,
            "outcomes": self.outcomes,
        }
        Path(self.config.getoption("conformance_report")).write_text(json.dumps(result, indent=1, sort_keys=True))
