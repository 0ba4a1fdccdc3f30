"""Run every benchmark in turn: .venv/bin/python benchmarks/run_all.py (results in benchmarks/results/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["mixed_generation.py", "prefill.py", "train_step.py", "adapters.py", "hub_cached_pull.py"]

if __name__ == "__main__":
    failed = [name for name in BENCHMARKS if subprocess.run([sys.executable, str(HERE / name)], cwd=HERE).returncode]
    sys.exit(f"failed: {failed}" if failed else 0)
