"""Only ``peft_ext/integration.py`` may reach into a private part of peft, transformers or huggingface_hub.

Every other module of ``peft_ext`` and ``hub`` uses their public API: no import of a private submodule (a dotted part
starting with ``_``, e.g. ``huggingface_hub.utils._http``), no import of a private name from them (``from
huggingface_hub.utils import _http``), and no private attribute read through a name imported from them
(``hf_constants._X``). Dunder names (``__version__``) are public. The check parses the source with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUARDED = ("peft", "transformers", "huggingface_hub")
ALLOWED = {"peft_ext/integration.py"}
SOURCES = sorted(
    p.relative_to(ROOT).as_posix() for package in ("peft_ext", "hub") for p in (ROOT / package).rglob("*.py")
)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _guarded_private_module(dotted: str) -> bool:
    parts = dotted.split(".")
    return parts[0] in GUARDED and any(_private(part) for part in parts[1:])


def private_uses(source: str) -> list[str]:
    """Each place ``source`` imports or reads a private part of a guarded package, as ``line N: what``."""
    tree = ast.parse(source)
    found: list[str] = []
    bound: set[str] = set()  # local names bound to a guarded module or to a name imported from one
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in GUARDED:
                    bound.add(alias.asname or alias.name.split(".")[0])
                    if _guarded_private_module(alias.name):
                        found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in GUARDED:
                continue
            if _guarded_private_module(node.module):
                found.append(f"line {node.lineno}: from {node.module} import ...")
            for alias in node.names:
                bound.add(alias.asname or alias.name)
                if _private(alias.name):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and _guarded_private_module(node.args[0].value)
        ):  # importlib.import_module("huggingface_hub.utils._http") and the like
            found.append(f"line {node.lineno}: {node.args[0].value!r}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif (  # getattr(hf_http, "_GLOBAL_CLIENT_FACTORY", ...)
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in bound
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return sorted(set(found))


@pytest.mark.parametrize(
    "source",
    [
        "from huggingface_hub.utils import _http as hf_http",  # what hub/stores/hf_client.py did
        "from huggingface_hub.utils import _http",
        "import huggingface_hub.utils._http",
        "import peft.tuners._x as x",
        "from transformers.utils._y import thing",
        "from peft.utils import _private_helper",
        "def f():\n    from transformers.trainer import _hidden",
        "from huggingface_hub.utils import _http as hf_http\nhf_http._GLOBAL_CLIENT_FACTORY",
        "import huggingface_hub\nhuggingface_hub.utils._http",
        "from huggingface_hub import constants\nconstants._PRIVATE",
        "from huggingface_hub.utils import get_session\ngetattr(get_session, '_x', None)",
        "import importlib\nimportlib.import_module('huggingface_hub.utils._http')",
    ],
)
def test_the_check_finds_private_uses(source: str) -> None:
    assert private_uses(source)


@pytest.mark.parametrize(
    "source",
    [
        "from huggingface_hub.utils import get_session, set_client_factory",
        "from huggingface_hub.utils.sha import git_hash",
        "import peft\npeft.__version__",
        "from . import _registration\nfrom ._registration import _x",  # our own private modules are ours
        "import numpy._core as c\nfrom torch._C import _x",  # other packages are not what this guards
        "from huggingface_hub import constants as hf_constants\nhf_constants.HF_HUB_OFFLINE",
    ],
)
def test_the_check_lets_public_uses_through(source: str) -> None:
    assert private_uses(source) == []


def test_sources_are_found() -> None:
    assert "hub/stores/hf_client.py" in SOURCES and "peft_ext/integration.py" in SOURCES


@pytest.mark.parametrize("path", [p for p in SOURCES if p not in ALLOWED])
def test_no_module_but_the_integration_module_uses_private_parts_of_peft_transformers_or_huggingface_hub(
    path: str,
) -> None:
    assert private_uses((ROOT / path).read_text(encoding="utf-8")) == [], (
        f"{path} uses private parts of {', '.join(GUARDED)}; go through their public API, or through "
        "peft_ext/integration.py"
    )
