"""Imports stay light where nothing heavy is needed, and SOFT_PROMPT is registered whatever the import order.

Each case runs in a fresh interpreter: what a process has imported is the thing under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> str:
    """``code`` in a fresh interpreter without the startup hook (tests/test_autoload.py covers it), so that what the
    code imports is all that is imported."""
    environment = {**os.environ, "PEFT_EXT_AUTOLOAD": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=environment, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


HEAVY = "sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)"
# The serve extra: only a running server needs it.
HTTP = "sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'prometheus_client', 'pydantic') if m in sys.modules)"


@pytest.mark.parametrize(
    "code",
    [
        "import peft_ext",
        "import peft_ext.errors",
        "import hub.versions",
        "import hub; hub.SemVer.parse('1.2.3')",
        "from peft_ext.cli import build_parser; build_parser().format_help()",
    ],
)
def test_light_imports_load_no_torch(code):
    assert _run(f"import sys\n{code}\nprint({HEAVY})") == "[]"


@pytest.mark.parametrize(
    "code",
    [
        "from peft_ext.cli import build_parser; build_parser().format_help()",
        "from peft_ext.serving.cli import main, register_serve, register_generate",
    ],
)
def test_the_serve_command_loads_nothing_heavy_until_it_runs(code):
    assert _run(f"import sys\n{code}\nprint({HEAVY} + {HTTP})") == "[]"


@pytest.mark.parametrize(
    "first",
    [
        "import peft_ext\nimport peft",  # the usual order
        "import peft\nimport peft_ext",  # peft already loaded
        "from peft_ext import SoftPromptConfig",  # a heavy name first
        "import peft_ext.multi",  # a heavy module first
        "import peft_ext.integration",  # the module that imports peft itself
        "import hub\nhub.LocalStore",
    ],
)
def test_soft_prompt_is_registered_whatever_the_import_order(first):
    code = f"""{first}
from peft import PeftConfig, PeftType
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
config = PeftConfig.from_peft_type(peft_type="SOFT_PROMPT")
print(PeftType.SOFT_PROMPT.value, type(config).__name__, PEFT_TYPE_TO_CONFIG_MAPPING["SOFT_PROMPT"].__name__)
"""
    assert _run(code) == "SOFT_PROMPT SoftPromptConfig SoftPromptConfig"
