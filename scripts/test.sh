#!/usr/bin/env bash
# The whole test suite, lint and type checks included, from a fresh clone: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# pytest exits 5 when it collected no tests; that is a failure here like any other non-zero code.
.venv/bin/python -m pytest -q "$@"
