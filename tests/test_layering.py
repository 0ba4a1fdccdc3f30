"""The import rule between the library, hub and the applications, checked on every module with ``ast``.

The library (every module of ``peft_ext`` outside the applications) imports neither ``hub`` nor an application; ``hub``
imports only the library; the applications may import both. Every import counts, absolute or relative, at module
level or inside a function (a lazy import is still an arrow), and so does a module named to ``importlib``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = "peft_ext"
HUB = "hub"
APPLICATIONS = ("peft_ext.cli", "peft_ext.serving")  # the demo is peft_ext.cli.demo
PACKAGES = (LIBRARY, HUB)
SOURCES = sorted(p.relative_to(ROOT).as_posix() for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def module_name(path: str) -> str:
    """``peft_ext/cli/__init__.py`` -> ``peft_ext.cli``; ``hub/api.py`` -> ``hub.api``."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def layer(name: str) -> str | None:
    """``"application"``, ``"hub"``, ``"library"``, or ``None`` for a module outside both packages."""
    if any(_within(name, app) for app in APPLICATIONS):
        return "application"
    if _within(name, HUB):
        return "hub"
    if _within(name, LIBRARY):
        return "library"
    return None


# Which layers each layer may import (its own included).
ALLOWED = {
    "library": {"library"},
    "hub": {"hub", "library"},
    "application": {"application", "hub", "library"},
}


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every module ``source`` (the text of ``module``) imports, absolute, as ``(line, dotted name)``.

    ``from X import y`` yields both ``X`` and ``X.y`` (``y`` may be a submodule), relative imports are resolved
    against ``module``, and ``importlib.import_module("...")`` / ``__import__`` with a literal name count too.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise ValueError(f"{module}, line {node.lineno}: relative import beyond the top-level package")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Each import in ``source`` (the text of ``module``) that breaks the rule, as ``line N: a -> b``."""
    own = layer(module)
    if own is None:
        return []
    bad: dict[tuple[int, str], str] = {}
    for line, target in sorted(set(imported_modules(source, module, is_package))):
        other = layer(target)
        reported = any(_within(target, seen) for seen_line, seen in bad if seen_line == line)
        if other is not None and other not in ALLOWED[own] and not reported:  # ``from hub import x``: once
            bad[line, target] = f"line {line}: {own} {module} -> {other} {target}"
    return list(bad.values())


@pytest.mark.parametrize("path", SOURCES)
def test_module_keeps_the_import_rule(path: str) -> None:
    source = (ROOT / path).read_text(encoding="utf-8")
    assert violations(source, module_name(path), path.endswith("__init__.py")) == []


def test_every_module_is_in_a_layer() -> None:
    assert len(SOURCES) > 40  # the walk found the packages
    layers = {path: layer(module_name(path)) for path in SOURCES}
    assert None not in layers.values()
    assert layers["peft_ext/base_models.py"] == layers["peft_ext/base_ref.py"] == "library"
    assert layers["peft_ext/cli/demo.py"] == layers["peft_ext/serving/app.py"] == "application"
    assert layers["hub/cli/__init__.py"] == "hub"


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("peft_ext.multi", "import hub", ["line 1: library peft_ext.multi -> hub hub"]),
        ("peft_ext.multi", "from hub.base_ref import X", ["line 1: library peft_ext.multi -> hub hub.base_ref"]),
        (
            "peft_ext.soft_prompt.model",
            "def f():\n    from ..cli import base_models",
            ["line 2: library peft_ext.soft_prompt.model -> application peft_ext.cli"],
        ),
        (
            "peft_ext.training",
            "from . import serving",
            ["line 1: library peft_ext.training -> application peft_ext.serving"],
        ),
        (
            "peft_ext.training",
            "import importlib\nimportlib.import_module('hub.api')",
            ["line 2: library peft_ext.training -> hub hub.api"],
        ),
        ("hub.api", "from peft_ext.cli.demo import run", ["line 1: hub hub.api -> application peft_ext.cli.demo"]),
        (
            "hub.stores.local",
            "from peft_ext import serving",
            ["line 1: hub hub.stores.local -> application peft_ext.serving"],
        ),
        ("hub.api", "from peft_ext.base_ref import BaseModelRef\nfrom .errors import HubError", []),
        ("peft_ext.cli.demo", "import hub\nfrom ..base_models import load_base_model\nfrom ..serving import x", []),
        ("peft_ext.serving.service", "from hub.errors import HubError\nfrom ..base_ref import BaseModelRef", []),
        ("peft_ext.multi", "import torch\nfrom .adapter_files import read_adapter_folder", []),
    ],
)
def test_the_checker_catches_a_planted_import(module: str, source: str, expected: list[str]) -> None:
    assert violations(source, module) == expected


def test_relative_imports_resolve_from_a_package_init() -> None:
    assert violations("from ..serving import app", "peft_ext.cli", is_package=True) == []
    assert violations("from .. import cli", "peft_ext.engine", is_package=True) == [
        "line 1: library peft_ext.engine -> application peft_ext.cli"
    ]
