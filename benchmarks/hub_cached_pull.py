"""Benchmark: pulling a version already in the Hugging Face cache makes no network request.

Runs the real huggingface_hub client against the test suite's local Hub-compatible server (tests/hub_tests/), pushes
a few versions with HfStore, then pulls one version cold (empty cache: the baseline) and warm (cached), counting the
requests the server saw and timing both. Writes benchmarks/results/hub_cached_pull.json.

    python benchmarks/hub_cached_pull.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "hub_tests"))

from fake_hub_server import FakeHub  # noqa: E402
from hub_testutils import REPO, TOKEN, make_adapter  # noqa: E402

import hub  # noqa: E402
from hub import HfStore  # noqa: E402


def timed_pull(server: FakeHub, store: HfStore, version: str) -> tuple[float, list[tuple[str, str]]]:
    before = len(server.requests)
    start = time.perf_counter()
    hub.pull(REPO, "coach", version, store=store)
    return time.perf_counter() - start, server.requests[before:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hub_cached_pull.json"))
    args = parser.parse_args()

    server = FakeHub(token=TOKEN)
    server.start()
    with tempfile.TemporaryDirectory() as tmp:
        pusher = HfStore(endpoint=server.url, token=TOKEN, cache_dir=Path(tmp) / "pusher")
        for seed in range(3):
            folder = make_adapter(Path(tmp) / f"a{seed}", seed=seed, n=20, dim=576)
            hub.push(folder, REPO, task="coach", store=pusher)

        cold, warm, cold_requests, warm_requests = [], [], [], []
        for i in range(args.repeats):
            store = HfStore(endpoint=server.url, token=TOKEN, cache_dir=Path(tmp) / f"cache{i}")  # empty cache
            seconds, requests = timed_pull(server, store, "1.0.2")
            cold.append(seconds)
            cold_requests.append(len(requests))
            seconds, requests = timed_pull(server, store, "1.0.2")
            warm.append(seconds)
            warm_requests.append(len(requests))
        _, constraint_requests = timed_pull(server, store, "^1.0")
    server.stop()

    result = {
        "benchmark": "hub_cached_pull",
        "what": "HfStore.pull of an exact version: cold (empty HF cache, baseline) vs warm (cached)",
        "repeats": args.repeats,
        "adapter": {"num_virtual_tokens": 20, "token_dim": 576, "dtype": "float32"},
        "cold": {"median_s": statistics.median(cold), "requests": max(cold_requests)},
        "warm": {"median_s": statistics.median(warm), "requests": max(warm_requests)},
        "warm_vs_cold_time_ratio": statistics.median(warm) / statistics.median(cold),
        "constraint_pull_requests_when_cached": [f"{m} {p}" for m, p in constraint_requests],
        "warm_pull_makes_no_request": max(warm_requests) == 0,
        "platform": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not result["warm_pull_makes_no_request"]:
        raise SystemExit("a cached pull made network requests")


if __name__ == "__main__":
    main()
