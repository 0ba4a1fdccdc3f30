"""Switching and loading adapters, and the memory of many loaded prompts, on the embedded default model.

- switching the active adapter of a MultiPromptModel (``using``): target <= 10 us (PEFT's set_adapter for reference);
- loading 100 saved adapters into one model: target <= 1 s (PEFT's load_adapter for reference);
- memory: 1,000 loaded 20-token prompts add at most 1.2x their own tensor bytes to the process (RSS).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import tempfile
import time
from pathlib import Path

import torch
from common import figure, median, write_result
from peft import PeftModel, get_peft_model

from peft_ext import MultiPromptModel, SoftPromptConfig
from peft_ext.base_models import load_base_model

PROMPT_TOKENS = 20


def release_free_heap() -> None:
    """Hand freed heap pages back to the OS, so later allocations show up in RSS instead of reusing them."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def time_switching(server: MultiPromptModel, names: list[str], rounds: int = 20_000) -> float:
    start = time.perf_counter()
    for index in range(rounds):
        with server.using(names[index % len(names)]):
            pass
    return (time.perf_counter() - start) / rounds


def time_peft_set_adapter(peft_model: PeftModel, names: list[str], rounds: int = 2_000) -> float:
    start = time.perf_counter()
    for index in range(rounds):
        peft_model.set_adapter(names[index % len(names)])
    return (time.perf_counter() - start) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-prompts", type=int, default=1000)
    args = parser.parse_args()
    base, _, _ = load_base_model()
    hidden = base.get_input_embeddings().weight.shape[1]

    with tempfile.TemporaryDirectory() as folder:
        names = [f"task{i}" for i in range(100)]
        peft_model = get_peft_model(base, SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=PROMPT_TOKENS))
        for index, name in enumerate(names):
            peft_model.prompt_encoder["default"].embedding.weight.data.normal_(
                generator=torch.Generator().manual_seed(index)
            )
            peft_model.save_pretrained(f"{folder}/{name}")

        load_seconds, peft_load_seconds, switch_seconds = [], [], []
        for _ in range(args.repeats):
            server = MultiPromptModel(base)
            start = time.perf_counter()
            for name in names:
                server.add(name, f"{folder}/{name}")
            load_seconds.append(time.perf_counter() - start)
            switch_seconds.append(time_switching(server, names))

            reference = PeftModel.from_pretrained(base, f"{folder}/{names[0]}", adapter_name=names[0])
            start = time.perf_counter()
            for name in names[1:]:
                reference.load_adapter(f"{folder}/{name}", adapter_name=name)
            peft_load_seconds.append((time.perf_counter() - start) * len(names) / (len(names) - 1))
        peft_switch = time_peft_set_adapter(reference, names)

    # Memory: prompts loaded from tensors the server then owns alone. Freed heap is returned to the OS first, or
    # the new prompts would fill old holes and the growth of RSS would understate their cost.
    server = MultiPromptModel(base)
    release_free_heap()
    before = rss_bytes()
    for index in range(args.memory_prompts):
        server.add(f"m{index}", torch.randn(PROMPT_TOKENS, hidden))
    gc.collect()
    added = rss_bytes() - before
    tensor_bytes = args.memory_prompts * PROMPT_TOKENS * hidden * 4
    overhead = added / tensor_bytes

    load_s, switch_s = median(load_seconds), median(switch_seconds)
    write_result(
        "adapters",
        {
            "seconds_loading_100": load_seconds,
            "seconds_peft_load_adapter_100": peft_load_seconds,
            "seconds_per_switch": switch_seconds,
            "seconds_per_peft_set_adapter": peft_switch,
            "memory": {"prompts": args.memory_prompts, "tensor_bytes": tensor_bytes, "rss_added_bytes": added},
            "figures": [
                figure("switch active adapter", switch_s * 1e6, "us", "<= 10 us", switch_s <= 10e-6),
                figure("load 100 adapters", load_s, "s", "<= 1 s", load_s <= 1.0),
                figure("PEFT load_adapter x100 (reference)", median(peft_load_seconds), "s", "-", True),
                figure("RSS added / prompt tensor bytes", overhead, "x", "<= 1.2x", overhead <= 1.2),
            ],
        },
    )


if __name__ == "__main__":
    main()
