"""Shared helpers of the benchmarks: alternating timed runs, medians, and the JSON each benchmark writes.

Benchmarks compare against a baseline measured in the same process and run (stock PEFT, the bare base model),
alternating the contenders so drift on a shared machine hits them alike. They are scripts, never timed tests.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def alternate(contenders: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each contender over ``repeats`` rounds, run in turn inside every round."""
    for _ in range(warmup):
        for run in contenders.values():
            run()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def environment() -> dict[str, Any]:
    import peft
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` and print one line per figure."""
    RESULTS.mkdir(exist_ok=True)
    result = {"benchmark": name, "environment": environment(), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for figure in result.get("figures", []):
        verdict = "met" if figure["met"] else "MISSED"
        value = f"{figure['value']:.3g} {figure['unit']}"
        print(f"{name}: {figure['name']} = {value} (target {figure['target']}) {verdict}")
    return path


def figure(name: str, value: float, unit: str, target: str, met: bool) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, "target": target, "met": bool(met)}
