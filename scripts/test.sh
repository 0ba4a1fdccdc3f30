#!/usr/bin/env bash
# The whole test suite from a fresh clone: bash scripts/test.sh [pytest arguments]
#   1. ruff, ruff format and mypy;
#   2. the tests on the newest versions pyproject.toml allows (./.venv);
#   3. PEFT's own test suite with SOFT_PROMPT cases added, and a control run of its stock cases (conformance/run.py);
#   4. the tests again on the lowest versions pyproject.toml allows (./.venv-lowest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# pytest exits 5 when it collected no tests; that is a failure here like any other non-zero code.
.venv/bin/python -m pytest -q "$@"
.venv/bin/python conformance/run.py
bash scripts/setup.sh lowest
.venv-lowest/bin/python -m pytest -q "$@"
