#!/usr/bin/env bash
# The main job on the embedded default model, from a fresh clone: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/peft-ext demo "$@"
