"""One stream: tokens/s and time to first token of greedy completions, one request at a time, against llama.cpp.

Contenders, on the embedded default (SmolLM2-135M-Instruct) in one process per thread count:
  - ``peft-ext serve`` in process (streamed over HTTP on 127.0.0.1; its linears packed, as the command does): the
    bare base, with a 20-token soft prompt, and the base in bfloat16 where the CPU computes in it;
  - transformers ``generate`` on the bare base (batch 1, no server);
  - llama.cpp's own server (the ``xllamacpp`` wheel, in process, one slot) on the shipped Q4_1 GGUF and on an F32
    GGUF of exactly our weights (benchmarks/llamacpp.py).
Each round sends the same distinct prompts (serve_load.py's source) to every contender in turn, one after another;
a contender's tokens/s is its generated tokens over the summed request times (prompt included), its TTFT the median
over the round's prompts; figures are medians over rounds. Thread counts (``--threads 1,2``: torch's and
llama.cpp's) each run in a fresh subprocess, so their settings never mix. Ratios are against llama.cpp F32 and Q4_1.
Needs xllamacpp (``pip install --only-binary=:all: xllamacpp``); results in benchmarks/results/single_stream.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import llamacpp
import torch
from common import median, prompt_texts, write_result
from serve_load import one_request, prompt_tensors, start_ours

from peft_ext.base_models import load_base_model, resolve_dtype

BASELINES = ("llama_cpp_f32", "llama_cpp_q4_1")


class _FirstToken:
    """A ``generate`` streamer that notes when the first new token exists (its first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.puts, self.first = 0, 0.0

    def put(self, value: Any) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def generate_request(model: Any, tokenizer: Any, text: str, max_tokens: int) -> dict[str, float]:
    """transformers' greedy ``generate``, batch 1, timed like a streamed request."""
    streamer = _FirstToken()
    start = time.perf_counter()
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id, streamer=streamer
        )
    end = time.perf_counter()
    tokens = out.shape[1] - ids["input_ids"].shape[1]
    prompt_tokens = ids["input_ids"].shape[1]
    return {
        "latency": end - start,
        "ttft": (streamer.first or end) - start,
        "tokens": tokens,
        "prompt_tokens": prompt_tokens,
    }


def http_request(url: str, model: str, text: str, max_tokens: int) -> dict[str, float]:
    """One streamed completion through serve_load's client (the same body and parsing for every server)."""

    async def run() -> dict[str, float]:
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
            return await one_request(client, url, model, text, max_tokens)

    return asyncio.run(run())


def summary(requests: list[dict[str, float]]) -> dict[str, float]:
    """One round of one contender: tokens/s over its summed request times, median TTFT."""
    tokens = sum(r["tokens"] for r in requests)
    return {
        "tokens_per_s": tokens / sum(r["latency"] for r in requests),
        "ttft_s": median([r["ttft"] for r in requests]),
        "tokens": tokens,
        "prompt_tokens": sum(r["prompt_tokens"] for r in requests),
    }


def worker(threads: int, count: int, max_tokens: int, rounds: int) -> dict[str, Any]:
    """Every contender at one thread count, in this fresh process, alternating in each round."""
    torch.set_num_threads(threads)  # before any server thread starts: each takes torch's setting on first use
    load_before = list(os.getloadavg())
    texts = prompt_texts(count, distinct=True)
    model, tokenizer, _ = load_base_model(show_progress=False)  # transformers' generate runs it as loaded
    soft_prompt = prompt_tensors(model)["task0"]
    ours = start_ours(load_base_model(show_progress=False).model, tokenizer, {"task0": soft_prompt})
    # --dtype auto: bfloat16 where the CPU computes in it (AVX-512 BF16 / AMX); the same server, the base in bfloat16
    half = resolve_dtype("auto")
    ours_half = None
    if half != torch.float32:
        half_model, _, _ = load_base_model(dtype=half, show_progress=False)
        ours_half = start_ours(half_model, tokenizer, {"task0": soft_prompt})
    with contextlib.ExitStack() as servers:
        f32 = servers.enter_context(llamacpp.llama_server(llamacpp.f32_gguf(), threads))
        q4_1 = servers.enter_context(llamacpp.llama_server(llamacpp.shipped_gguf(), threads))
        contenders: dict[str, Callable[[str, int], dict[str, float]]] = {
            "peft_ext_serve_base": lambda text, n: http_request(ours.url, "base", text, n),
            "peft_ext_serve_soft_prompt": lambda text, n: http_request(ours.url, "task0", text, n),
            "transformers_generate": lambda text, n: generate_request(model, tokenizer, text, n),
            "llama_cpp_f32": lambda text, n: http_request(f32, "f32", text, n),
            "llama_cpp_q4_1": lambda text, n: http_request(q4_1, "q4_1", text, n),
        }
        if ours_half is not None:
            url = ours_half.url
            contenders["peft_ext_serve_base_bfloat16"] = lambda text, n: http_request(url, "base", text, n)
        for run in contenders.values():  # warm-up: one short request each
            run(texts[0], 8)
        rounds_: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
        for round_ in range(rounds):
            for name, run in contenders.items():
                rounds_[name].append(summary([run(text, max_tokens) for text in texts]))
                print(f"threads {threads} round {round_ + 1}: {name} {rounds_[name][-1]}", file=sys.stderr, flush=True)
    ours.stop()
    if ours_half is not None:
        ours_half.stop()
    tokens_per_s = {name: median([r["tokens_per_s"] for r in done]) for name, done in rounds_.items()}
    ttft = {name: median([r["ttft_s"] for r in done]) for name, done in rounds_.items()}
    ratios = {
        f"{name}_tokens_per_s_vs_{baseline}": tokens_per_s[name] / tokens_per_s[baseline]
        for baseline in BASELINES
        for name in tokens_per_s
        if name != baseline
    }
    ratios |= {
        f"{name}_ttft_vs_{baseline}": ttft[name] / ttft[baseline]
        for baseline in BASELINES
        for name in ttft
        if name != baseline
    }
    return {
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "llama_cpp": llamacpp.llama_settings(threads, 1),
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "median_tokens_per_s": tokens_per_s,
        "median_ttft_s": ttft,
        "ratios": ratios,
        "rounds": rounds_,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16, help="distinct prompts per round, at most 42 (default 16)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, contenders alternating (default 3)")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = [int(n) for n in args.threads.split(",")]
    if args.worker:
        print(json.dumps(worker(threads[0], args.prompts, args.max_tokens, args.rounds)))
        return

    llamacpp.xllamacpp()  # exits with the install line when missing
    prompt_texts(args.prompts, distinct=True)  # refuse a count that repeats prompts before starting
    load_before = list(os.getloadavg())
    start = time.perf_counter()
    f32 = llamacpp.f32_gguf()  # written once, before any timing
    result: dict[str, Any] = {
        "setup": {
            "prompts": args.prompts,
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
            "soft_prompt_tokens": 20,
            "f32_gguf": str(f32),
            "f32_gguf_ready_s": time.perf_counter() - start,
            "q4_1_gguf": str(llamacpp.shipped_gguf()),
        },
        "load_average_before": load_before,
    }
    for thread_count in threads:
        command = [sys.executable, __file__, "--worker", "--threads", str(thread_count), "--prompts", str(args.prompts)]
        command += ["--max-tokens", str(args.max_tokens), "--rounds", str(args.rounds)]
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        run = json.loads(out.strip().splitlines()[-1])
        result[f"threads_{thread_count}"] = run
        for name, value in run["ratios"].items():
            result.setdefault("ratios", {})[f"threads_{thread_count}_{name}"] = value
        print(
            f"{thread_count} thread(s), tokens/s:",
            json.dumps({k: round(v, 1) for k, v in run["median_tokens_per_s"].items()}),
        )
        print(
            f"{thread_count} thread(s), TTFT s:", json.dumps({k: round(v, 3) for k, v in run["median_ttft_s"].items()})
        )
    write_result("single_stream", result)


if __name__ == "__main__":
    main()
