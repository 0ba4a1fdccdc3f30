"""Open-loop load on `peft-ext serve`: Poisson arrivals of streamed completions over 16 soft prompts.

Three servers on the embedded default model, each behind the same OpenAI Completions API on 127.0.0.1:
  (a) ours: continuous batching, a different prompt per row, prompt keys/values cached;
  (b) stock PEFT, one request at a time: ``set_adapter`` + ``generate`` on a PeftModel holding the 16 prompts as
      PROMPT_TUNING adapters (stock ``generate`` is wrong from transformers 5.24 on, so it runs through
      ``peft_ext.use_exact_generate``, which computes what stock generate computed before: one prefill with the
      prompt, then cached decoding);
  (c) the ceiling: the bare base model served by our server, the requests naming the base (no prompts).
Load levels are fractions of (a)'s measured capacity: light (0.2x), half (0.5x) and saturation (1.5x). Reported per
server and level: throughput (generated tokens/s), p50/p99 latency and time to first token; ratios in JSON. A
script, not a timed test: its figures depend on the machine; only the ratios, measured side by side, mean much.

Then a closed loop against llama.cpp (``--closed-loop-only`` runs it alone): 16 client streams, each sending its next
request as soon as its last one ends, greedy, over distinct prompts; generated tokens/s of (a), (c), and llama.cpp's
own server (the ``xllamacpp`` wheel, in process, 16 slots, continuous batching) on the shipped Q4_1 GGUF and on an F32
GGUF of exactly our weights (benchmarks/llamacpp.py). One subprocess per thread count (``--threads 1,2``: torch's and
llama.cpp's), the contenders alternating in every round, medians of the rounds; ratios in JSON. Without xllamacpp
(``pip install --only-binary=:all: xllamacpp``) the llama.cpp contenders are left out and the run says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import torch
from common import figure, median, prompt_texts, write_result
from peft import PromptTuningConfig, get_peft_model

from peft_ext import use_exact_generate
from peft_ext.base_models import load_base_model
from peft_ext.engine.packed_linear import pack_linears
from peft_ext.serving.server import Server, bind
from peft_ext.serving.service import Service

PROMPTS, PROMPT_TOKENS = 16, 20
MAX_TOKENS = 64  # --max-tokens; module-level so the load generator's process reads the same value
LEVELS = {"light": 0.2, "half": 0.5, "saturation": 1.5}
CONCURRENCY = 16  # the closed loop's client streams


def prompt_tensors(base: Any) -> dict[str, torch.Tensor]:
    """16 prompts of 20 vocabulary embeddings each (what a vocab init starts from), fixed by a seed."""
    generator = torch.Generator().manual_seed(0)
    weight = base.get_input_embeddings().weight.detach()
    return {
        f"task{i}": weight[torch.randint(0, weight.shape[0], (PROMPT_TOKENS,), generator=generator)].clone()
        for i in range(PROMPTS)
    }


def start(app_server: Any) -> Any:
    thread = threading.Thread(target=app_server.run, daemon=True)
    thread.start()
    while not app_server.started:
        time.sleep(0.05)
    return thread


def start_ours(base: Any, tokenizer: Any, prompts: dict[str, torch.Tensor]) -> Server:
    """(a) and (c): our server on a free port, the base served as ``base`` and every prompt under its name."""
    pack_linears(base)  # as peft-ext serve does
    service = Service(base, tokenizer, base_name="base", max_running=32, max_queued=1024)
    for name, tensor in prompts.items():
        service.add(name, tensor)
    server = Server(service, bind("127.0.0.1", 0), log_level="warning", access_log=False)
    start(server)
    return server


def stock_app(tokenizer: Any, prompts: dict[str, torch.Tensor]) -> Any:
    """(b): stock PEFT behind the same API, one request at a time."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    base, _, _ = load_base_model(show_progress=False)
    names = list(prompts)
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=PROMPT_TOKENS)
    model = get_peft_model(base, config, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    with torch.no_grad():
        for name, tensor in prompts.items():
            model.prompt_encoder[name].embedding.weight.copy_(tensor)
    use_exact_generate(model.eval())
    lock = asyncio.Lock()
    app = FastAPI()

    def generate(name: str, text: str, max_tokens: int) -> list[int]:
        model.set_adapter(name)
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        return out[0, ids["input_ids"].shape[1] :].tolist()

    @app.post("/v1/completions")
    async def completions(body: dict[str, Any]) -> StreamingResponse:
        async with lock:  # one request at a time, as PEFT serves one adapter at a time
            tokens = await asyncio.to_thread(generate, body["model"], body["prompt"], body["max_tokens"])

        async def events() -> Any:
            for token in tokens:
                yield f"data: {json.dumps({'choices': [{'text': tokenizer.decode([token])}]})}\n\n"
            usage = {"completion_tokens": len(tokens)}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class StockServer:
    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = bind("127.0.0.1", 0)
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def started(self) -> bool:
        return bool(self._server.started)

    def run(self) -> None:
        self._server.run(sockets=[self.sock])

    def stop(self) -> None:
        self._server.should_exit = True


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, text: str, max_tokens: int | None = None
) -> dict[str, float]:
    """One streamed greedy completion: latency, time to first token, generated and prompt tokens (from usage)."""
    body = {
        "model": model,
        "prompt": text,
        "max_tokens": max_tokens or MAX_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    tokens = prompt_tokens = 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
                prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
            elif chunk["choices"] and chunk["choices"][0].get("text") and first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    timing = {"latency": end - start, "ttft": (first or end) - start, "end": end, "start": start}
    return {**timing, "tokens": tokens, "prompt_tokens": prompt_tokens}


async def open_loop(url: str, models: list[str], rate: float, count: int, seed: int) -> dict[str, Any]:
    """``count`` requests at Poisson arrivals of ``rate`` per second; each streams its completion."""
    rng = random.Random(seed)
    prompts = prompt_texts(count)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        tasks = []
        begin = time.perf_counter()
        for i in range(count):
            tasks.append(asyncio.create_task(one_request(client, url, rng.choice(models), prompts[i])))
            await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
    finish = max(r["end"] for r in results)
    return {
        "rate_per_s": rate,
        "requests": count,
        "throughput_tokens_per_s": sum(r["tokens"] for r in results) / (finish - begin),
        "latency_p50_s": _percentile([r["latency"] for r in results], 50),
        "latency_p99_s": _percentile([r["latency"] for r in results], 99),
        "ttft_p50_s": _percentile([r["ttft"] for r in results], 50),
        "ttft_p99_s": _percentile([r["ttft"] for r in results], 99),
    }


async def closed_loop(url: str, models: list[str], count: int, concurrency: int) -> dict[str, Any]:
    """``count`` distinct prompts through ``concurrency`` client streams, each sending its next request as soon as
    its last one ends; request ``i`` names ``models[i % len(models)]``."""
    prompts = prompt_texts(count, distinct=True)
    queue = iter(range(count))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:

        async def stream() -> list[dict[str, float]]:
            return [await one_request(client, url, models[i % len(models)], prompts[i]) for i in queue]

        begin = time.perf_counter()
        results = [r for done in await asyncio.gather(*(stream() for _ in range(concurrency))) for r in done]
    tokens = sum(r["tokens"] for r in results)
    return {
        "requests": count,
        "concurrency": concurrency,
        "tokens": tokens,
        "prompt_tokens": sum(r["prompt_tokens"] for r in results),
        "throughput_tokens_per_s": tokens / (max(r["end"] for r in results) - begin),
        "latency_p50_s": _percentile([r["latency"] for r in results], 50),
        "ttft_p50_s": _percentile([r["ttft"] for r in results], 50),
    }


def _percentile(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def drive(
    url: str, models: list[str], rate: float, count: int, seed: int, concurrency: int = 0, max_tokens: int = 0
) -> dict[str, Any]:
    """Run the load generator in its own process, so its parsing never competes with the servers for the GIL.

    Open loop at ``rate`` requests/s, or with ``concurrency`` a closed loop of that many client streams.
    """
    command = [sys.executable, __file__, "--drive", url, "--models", ",".join(models)]
    command += ["--rate", repr(rate), "--count", str(count), "--seed", str(seed)]
    command += ["--concurrency", str(concurrency), "--max-tokens", str(max_tokens or MAX_TOKENS)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the load generator failed on {models} at {url}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


async def unloaded(url: str, model: str, count: int = 5) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        results = [await one_request(client, url, model, text) for text in prompt_texts(count)]
    return {
        "ttft_s": statistics.median(r["ttft"] for r in results),
        "latency_s": statistics.median(r["latency"] for r in results),
    }


def capacity(url: str, models: list[str], concurrency: int = 32) -> float:
    """Requests/s the server sustains when ``2 * concurrency`` requests arrive at once: what saturates it."""
    result = drive(url, models, rate=1000.0, count=concurrency * 2, seed=1)
    return result["throughput_tokens_per_s"] / MAX_TOKENS


def open_loop_levels(requests: int) -> dict[str, Any]:
    """Servers (a), (b) and (c) under open-loop load at each level, with the ratios and figures of the issue."""
    base, tokenizer, _ = load_base_model(show_progress=False)
    prompts = prompt_tensors(base)
    ours = start_ours(base, tokenizer, prompts)
    stock = StockServer(stock_app(tokenizer, prompts))
    start(stock)
    names = list(prompts)

    per_request_rate = capacity(ours.url, names)
    result: dict[str, Any] = {
        "setup": {
            "prompts": PROMPTS,
            "prompt_tokens": PROMPT_TOKENS,
            "max_tokens": MAX_TOKENS,
            "requests": requests,
        },
        "capacity_requests_per_s": per_request_rate,
        "unloaded": {
            "ours": asyncio.run(unloaded(ours.url, names[0])),
            "stock_peft": asyncio.run(unloaded(stock.url, names[0])),
            "bare_base": asyncio.run(unloaded(ours.url, "base")),
        },
        "levels": {},
    }
    for level, fraction in LEVELS.items():
        rate = fraction * per_request_rate
        result["levels"][level] = {
            "ours": drive(ours.url, names, rate, requests, seed=2),
            "bare_base": drive(ours.url, ["base"], rate, requests, seed=2),
            # one request at a time: 32 are enough to measure it, and more would take minutes per level
            "stock_peft": drive(stock.url, names, rate, min(requests, 32), seed=2),
        }
        print(level, json.dumps(result["levels"][level], indent=1))
    saturation = result["levels"]["saturation"]
    result["ratios"] = {
        "saturation_throughput_vs_stock_peft": saturation["ours"]["throughput_tokens_per_s"]
        / saturation["stock_peft"]["throughput_tokens_per_s"],
        "saturation_throughput_vs_bare_base": saturation["ours"]["throughput_tokens_per_s"]
        / saturation["bare_base"]["throughput_tokens_per_s"],
        "half_load_ttft_p99_vs_unloaded": result["levels"]["half"]["ours"]["ttft_p99_s"]
        / result["unloaded"]["ours"]["ttft_s"],
    }
    result["targets"] = {
        "saturation_throughput_vs_stock_peft": ">= 8",
        "saturation_throughput_vs_bare_base": ">= 0.85",
        "half_load_ttft_p99_vs_unloaded": "<= 2",
    }
    ratios = result["ratios"]
    result["figures"] = [
        figure(
            "saturation throughput vs stock PEFT",
            ratios["saturation_throughput_vs_stock_peft"],
            "x",
            ">= 8",
            ratios["saturation_throughput_vs_stock_peft"] >= 8,
        ),
        figure(
            "saturation throughput vs bare base",
            ratios["saturation_throughput_vs_bare_base"],
            "x",
            ">= 0.85",
            ratios["saturation_throughput_vs_bare_base"] >= 0.85,
        ),
        figure(
            "half-load p99 TTFT vs unloaded TTFT",
            ratios["half_load_ttft_p99_vs_unloaded"],
            "x",
            "<= 2",
            ratios["half_load_ttft_p99_vs_unloaded"] <= 2,
        ),
    ]
    ours.stop()
    stock.stop()
    return result


def closed_loop_worker(threads: int, rounds: int, count: int) -> dict[str, Any]:
    """The closed loop at one thread count, in this (fresh) process: every contender in turn in each round."""
    import llamacpp

    torch.set_num_threads(threads)  # before any server thread starts: each takes torch's setting on first use
    load_before = list(os.getloadavg())
    base, tokenizer, _ = load_base_model(show_progress=False)
    prompts = prompt_tensors(base)
    ours = start_ours(base, tokenizer, prompts)
    contenders = {"ours": (ours.url, list(prompts)), "bare_base": (ours.url, ["base"])}
    with contextlib.ExitStack() as servers:
        if llamacpp.available():
            for name, path in (("llama_cpp_f32", llamacpp.f32_gguf()), ("llama_cpp_q4_1", llamacpp.shipped_gguf())):
                server = llamacpp.llama_server(path, threads, parallel=CONCURRENCY, slot_context=128 + MAX_TOKENS)
                contenders[name] = (servers.enter_context(server), [name])
        for url, models in contenders.values():  # warm-up: one short request per stream
            drive(url, models, 0.0, CONCURRENCY, seed=0, concurrency=CONCURRENCY, max_tokens=8)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        for round_ in range(rounds):
            for name, (url, models) in contenders.items():
                runs[name].append(drive(url, models, 0.0, count, seed=0, concurrency=CONCURRENCY))
                print(f"threads {threads} round {round_ + 1}: {name} {runs[name][-1]}", file=sys.stderr, flush=True)
    ours.stop()
    throughput = {name: median([r["throughput_tokens_per_s"] for r in done]) for name, done in runs.items()}
    ratios = {"ours_vs_bare_base": throughput["ours"] / throughput["bare_base"]}
    for llama in (name for name in throughput if name.startswith("llama_cpp")):
        for name in ("ours", "bare_base"):
            ratios[f"{name}_vs_{llama}"] = throughput[name] / throughput[llama]
    return {
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "llama_cpp": llamacpp.llama_settings(threads, CONCURRENCY) if llamacpp.available() else None,
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "median_throughput_tokens_per_s": throughput,
        "ratios": ratios,
        "runs": runs,
    }


def closed_loop_run(threads: list[int], rounds: int, count: int) -> dict[str, Any]:
    """The closed loop at each thread count, each in its own process so that thread settings never mix."""
    import llamacpp

    if llamacpp.available():
        llamacpp.f32_gguf()  # written once, before any timing
    else:
        print(f"llama.cpp contenders left out: {llamacpp.INSTALL}", file=sys.stderr)
    result: dict[str, Any] = {
        "setup": {"concurrency": CONCURRENCY, "requests": count, "rounds": rounds, "max_tokens": MAX_TOKENS},
    }
    for thread_count in threads:
        command = [sys.executable, __file__, "--closed-loop-worker", "--threads", str(thread_count)]
        command += ["--rounds", str(rounds), "--closed-requests", str(count), "--max-tokens", str(MAX_TOKENS)]
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        result[f"threads_{thread_count}"] = json.loads(out.strip().splitlines()[-1])
        worker = result[f"threads_{thread_count}"]
        print(f"closed loop, {thread_count} thread(s):", json.dumps(worker["median_throughput_tokens_per_s"]))
        print(f"closed loop, {thread_count} thread(s) ratios:", json.dumps(worker["ratios"]))
    return result


def main() -> None:
    global MAX_TOKENS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64, help="requests per load level (default 64)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="tokens generated per request (default 64)")
    parser.add_argument("--closed-loop-only", action="store_true", help="run only the closed loop against llama.cpp")
    parser.add_argument("--open-loop-only", action="store_true", help="run only the open-loop levels")
    parser.add_argument(
        "--closed-requests", type=int, default=32, help="requests per closed-loop run, at most 42 (default 32)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="closed-loop rounds, contenders alternating (default 3)")
    parser.add_argument("--threads", default="1,2", help="closed-loop thread counts, comma-separated (default 1,2)")
    parser.add_argument("--closed-loop-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--drive", help=argparse.SUPPRESS)  # the load generator's own process: URL
    parser.add_argument("--models", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=0, help=argparse.SUPPRESS)  # 0: open loop
    args = parser.parse_args()
    MAX_TOKENS = args.max_tokens
    if args.drive:
        models = args.models.split(",")
        if args.concurrency:
            load = asyncio.run(closed_loop(args.drive, models, args.count, args.concurrency))
        else:
            load = asyncio.run(open_loop(args.drive, models, args.rate, args.count, args.seed))
        print(json.dumps(load))
        return
    threads = [int(n) for n in args.threads.split(",")]
    if args.closed_loop_worker:
        print(json.dumps(closed_loop_worker(threads[0], args.rounds, args.closed_requests)))
        return

    prompt_texts(args.closed_requests, distinct=True)  # refuse a count that repeats prompts before an hour of runs
    load_before = list(os.getloadavg())
    result = {} if args.closed_loop_only else open_loop_levels(args.requests)
    if not args.open_loop_only:
        result["closed_loop"] = closed_loop_run(threads, args.rounds, args.closed_requests)
        for thread_count in threads:
            for name, value in result["closed_loop"][f"threads_{thread_count}"]["ratios"].items():
                result.setdefault("ratios", {})[f"closed_loop_threads_{thread_count}_{name}"] = value
    result["load_average_before"] = load_before
    result["torch_threads"] = torch.get_num_threads()
    name = "serve_load_closed_loop" if args.closed_loop_only else "serve_load"
    write_result(name if MAX_TOKENS == 64 else f"{name}_max_tokens_{MAX_TOKENS}", result)


if __name__ == "__main__":
    main()
