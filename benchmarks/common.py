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
from importlib.resources import files
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


def prompt_texts(count: int, distinct: bool = False) -> list[str]:
    """The first ``count`` packaged quotes, cut to 100 characters (7 to 23 tokens for SmolLM2's tokenizer).

    The list repeats itself from its 43rd quote on (49 distinct in 325): ``distinct=True`` refuses a ``count`` that
    would repeat a prompt, for benchmarks where a repeated prompt could be answered from a cache.
    """
    quotes = json.loads(files("inspiring_quotes").joinpath("quotes_list.json").read_text(encoding="utf-8"))
    texts = [item["quote"][:100] for item in quotes[:count]]
    if distinct and len(set(texts)) < count:
        first = next(i for i, text in enumerate(texts) if text in texts[:i])
        raise SystemExit(f"Only the first {first} packaged prompts are distinct: ask for at most {first}.")
    return texts


def cpu_model() -> str:
    """The processor's name as the kernel reports it (``platform.processor()`` is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        "cpu_model": cpu_model(),
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
