"""Learning quality: how much each prompt method learns in 60 steps of 8 on the embedded default model, against
stock PEFT's prompt methods and LoRA as the ceiling.

Three tasks from packaged data (``quality_tasks.py``): two classifications with hundreds of held-out rows (topics of
prompts, 450 rows; authors of quotes, 240 rows: one row is 0.22 / 0.42 points) and held-out loss on 320 quotes.
Contenders: zero-shot; stock PEFT prompt tuning (sample-vocab and text init), P-tuning (MLP), prefix tuning and LoRA
r=8 on all linear layers; peft_ext's input-level prompt (``frequent``, ``labels``) and deep prompt (keys/values in
every layer, started from the keys/values of an init: ``frequent``, ``labels``, ``text``, ``random``). Every trained
contender gets the same batches, the same optimiser (AdamW, the learning rate given per contender) and the same number
of steps; each is run over 3 seeds (init and batch order), evaluated every 20 steps. Beside each: trainable
parameters, the bytes of its saved adapter and seconds per training step (measured apart, alternating contenders on
one batch).

A script, not a test. Runs are appended to ``results/quality_runs.jsonl`` as they finish and skipped when found there,
so a long run can stop and resume (a run is keyed by task, contender, seed and the protocol). Writes
``results/quality.json`` and ``results/quality.png``.

    .venv/bin/python benchmarks/quality.py [--tasks topics,authors,quotes] [--contenders NAME,...] [--seeds 3]
    .venv/bin/python benchmarks/quality.py --no-training [--no-cost]   # report what is recorded so far
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, alternate, figure, write_result
from peft import (
    LoraConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    PromptTuningInit,
    get_peft_model,
)
from quality_tasks import TASKS, Task
from tqdm.auto import tqdm
from transformers import get_scheduler

from peft_ext import SoftPromptConfig
from peft_ext.adapter_files import pad_token_id
from peft_ext.base_models import load_base_model
from peft_ext.evaluation import accuracy, collate, encode, mean_loss

STEPS, BATCH, TOKENS, LR, MAX_LENGTH = 60, 8, 16, 3e-2, 48
EVAL_EVERY = 20
PROTOCOL = {
    "steps": STEPS,
    "batch": BATCH,
    "num_virtual_tokens": TOKENS,
    "max_length": MAX_LENGTH,
    "optimizer": "AdamW",
    "tasks": 2,  # the second task set: hundreds of held-out rows, three tasks
}
RUNS = RESULTS / "quality_runs.jsonl"


@dataclass(frozen=True)
class Contender:
    family: str  # "peft" (stock prompt methods), "lora" (the ceiling), "peft_ext", "peft_ext_deep" or "none"
    config: Callable[[Task, Any], Any] | None  # (task, tokenizer) -> a PEFT config; None for zero-shot
    lr: float = LR
    needs_choices: bool = False  # a label init: classification only
    matches: str | None = None  # the PEFT contender whose training step this one's cost is compared with
    recipe: str = "constant"  # a key of RECIPES


@dataclass(frozen=True)
class Recipe:
    """How the steps are taken: AdamW's weight decay, gradient clipping and the learning-rate schedule."""

    weight_decay: float = 0.01  # torch's AdamW default
    clip: float | None = None
    warmup: int = 0
    schedule: str = "constant"  # or "cosine": to 0 at the last step, after the warmup (transformers' schedulers)


RECIPES = {
    "constant": Recipe(),
    # what transformers' Trainer does by default (no weight decay, gradients clipped at norm 1), with 10% warmup and a
    # cosine decay
    "clipped cosine": Recipe(weight_decay=0.0, clip=1.0, warmup=STEPS // 10, schedule="cosine"),
}


def _peft(**kwargs: Any) -> Callable[[Task, Any], Any]:
    return lambda task, tokenizer: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=TOKENS, **kwargs)


def _peft_text(task: Task, tokenizer: Any) -> Any:
    return PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=TOKENS,
        prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=task.init_text,
        tokenizer_name_or_path=tokenizer.name_or_path,  # the converted local folder: no download
    )


def _p_tuning(task: Task, tokenizer: Any) -> Any:
    return PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=TOKENS, encoder_hidden_size=576)


def _prefix(task: Task, tokenizer: Any) -> Any:
    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=TOKENS, prefix_projection=False)


def _prefix_projection(task: Task, tokenizer: Any) -> Any:
    """PEFT's reparameterization of prefix tuning (Li & Liang 2021): an MLP makes every layer's keys/values."""
    return PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=TOKENS, prefix_projection=True, encoder_hidden_size=576
    )


def _lora(task: Task, tokenizer: Any) -> Any:
    return LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")


def _ours(with_data: bool = False, **kwargs: Any) -> Callable[[Task, Any], Any]:
    """One of our configs; ``with_data``: the training texts go to the init (``init_texts``: frequent, labels)."""

    def build(task: Task, tokenizer: Any) -> Any:
        text = {"init_text": task.init_text, "text_length_policy": "repeat"} if kwargs.get("init") == "text" else {}
        labels = {"label_words": [c.strip() for c in task.choices or []]} if kwargs.get("init") == "labels" else {}
        data = {"init_texts": [e.context + e.target for e in task.train]} if with_data else {}
        return SoftPromptConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=TOKENS, tokenizer=tokenizer, **text, **labels, **data, **kwargs
        )

    return build


VOCAB, PREFIX = "PEFT prompt tuning: sample-vocab", "PEFT prefix tuning"
# what `peft-ext train` does when the user sets nothing (DEFAULT_INIT, DEFAULT_PLACEMENT and DEFAULT_LR there)
DEFAULT = "deep: frequent (lr 0.01)"
CONTENDERS: dict[str, Contender] = {
    "zero-shot": Contender("none", None),
    "PEFT prompt tuning: sample-vocab": Contender("peft", _peft(prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)),
    "PEFT prompt tuning: text": Contender("peft", _peft_text),
    "PEFT P-tuning: MLP": Contender("peft", _p_tuning),
    "PEFT prefix tuning": Contender("peft", _prefix),
    "PEFT prefix tuning: projection": Contender("peft", _prefix_projection),
    "PEFT LoRA r=8 (all linear)": Contender("lora", _lora, lr=3e-3),
    "frequent (data tokens)": Contender("peft_ext", _ours(init="frequent", with_data=True), matches=VOCAB),
    "labels (frequent fill)": Contender(
        "peft_ext", _ours(init="labels", with_data=True), needs_choices=True, matches=VOCAB
    ),
    "deep: frequent": Contender(
        "peft_ext_deep", _ours(init="frequent", with_data=True, placement="deep"), matches=PREFIX
    ),
    "deep: labels": Contender(
        "peft_ext_deep", _ours(init="labels", with_data=True, placement="deep"), needs_choices=True, matches=PREFIX
    ),
    "deep: text": Contender("peft_ext_deep", _ours(init="text", placement="deep"), matches=PREFIX),
    "deep: random": Contender("peft_ext_deep", _ours(init="random", placement="deep"), matches=PREFIX),
    # learning-rate candidates for deep prompts
    "deep: frequent (lr 0.01)": Contender(
        "peft_ext_deep", _ours(init="frequent", with_data=True, placement="deep"), lr=1e-2, matches=PREFIX
    ),
    "deep: frequent (lr 0.1)": Contender(
        "peft_ext_deep", _ours(init="frequent", with_data=True, placement="deep"), lr=1e-1, matches=PREFIX
    ),
}


def _key(task: str, contender: str, seed: int) -> str:
    lr, recipe = CONTENDERS[contender].lr, CONTENDERS[contender].recipe
    named = {"recipe": recipe} if recipe != "constant" else {}  # the runs made before recipes keep their keys
    return json.dumps(
        {"task": task, "contender": contender, "seed": seed, "lr": lr, **named, **PROTOCOL}, sort_keys=True
    )


def _done() -> dict[str, dict[str, Any]]:
    if not RUNS.exists():
        return {}
    runs = [json.loads(line) for line in RUNS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {run["key"]: run for run in runs}


def _evaluate(model: Any, tokenizer: Any, task: Task) -> float:
    model.eval()
    if task.choices is not None:
        return accuracy(model, tokenizer, task.test, task.choices, max_length=MAX_LENGTH)
    return mean_loss(model, tokenizer, task.test, max_length=MAX_LENGTH)


def _batches(task: Task, tokenizer: Any, seed: int) -> list[dict[str, torch.Tensor]]:
    """The ``STEPS`` training batches of one seed: the training rows shuffled per epoch, in order."""
    rng, order = random.Random(seed), []
    while len(order) < STEPS * BATCH:
        epoch = list(range(len(task.train)))
        rng.shuffle(epoch)
        order += epoch
    pad_id = pad_token_id(tokenizer)
    rows = [encode(tokenizer, task.train[i], MAX_LENGTH) for i in order]
    return [collate(rows[s * BATCH : (s + 1) * BATCH], pad_id) for s in range(STEPS)]


def _model(contender: Contender, task: Task, seed: int) -> tuple[Any, Any]:
    base, tokenizer, _ = load_base_model(show_progress=False)
    if contender.config is None:
        return base, tokenizer
    torch.manual_seed(seed)  # the init's draws (PEFT's and ours follow the global seed)
    return get_peft_model(base, contender.config(task, tokenizer)), tokenizer


def run(task: Task, name: str, seed: int) -> dict[str, Any]:
    contender = CONTENDERS[name]
    model, tokenizer = _model(contender, task, seed)
    curve = {0: _evaluate(model, tokenizer, task)}
    seconds: list[float] = []
    if contender.config is not None:
        recipe = RECIPES[contender.recipe]
        trained = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=contender.lr, weight_decay=recipe.weight_decay)
        scheduler = get_scheduler(recipe.schedule, optimizer, num_warmup_steps=recipe.warmup, num_training_steps=STEPS)
        for step, batch in enumerate(tqdm(_batches(task, tokenizer, seed), desc=f"{task.name}/{name}/{seed}"), 1):
            model.train()
            start = time.perf_counter()
            model(**batch).loss.backward()
            if recipe.clip is not None:
                torch.nn.utils.clip_grad_norm_(trained, recipe.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            seconds.append(time.perf_counter() - start)
            if step % EVAL_EVERY == 0:
                curve[step] = _evaluate(model, tokenizer, task)
    else:
        curve.update({step: curve[0] for step in range(EVAL_EVERY, STEPS + 1, EVAL_EVERY)})
    curve_json = {str(step): value for step, value in curve.items()}  # as JSON keys, the same before and after a reload
    return {
        "task": task.name,
        "contender": name,
        "seed": seed,
        "curve": curve_json,
        "seconds_per_step": seconds,
        **_size(model, contender),
    }


def _size(model: Any, contender: Contender) -> dict[str, int]:
    """Trainable parameters while training and the bytes of the saved adapter file (what is shared and served)."""
    if contender.config is None:
        return {"trainable_parameters": 0, "adapter_bytes": 0}
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        size = (Path(folder) / "adapter_model.safetensors").stat().st_size
    return {
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "adapter_bytes": size,
    }


def step_costs(task: Task, names: list[str]) -> dict[str, float]:
    """Seconds of one training step per contender on the same batch, alternating contenders (median of 5)."""
    steps = {}
    for name in names:
        model, tokenizer = _model(CONTENDERS[name], task, seed=0)
        batch = _batches(task, tokenizer, seed=0)[0]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)

        def one_step(model: Any = model, batch: Any = batch, optimizer: Any = optimizer) -> None:
            model.train()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        steps[name] = one_step
    return {name: statistics.median(times) for name, times in alternate(steps, repeats=5).items()}


def summarise(runs: list[dict[str, Any]], tasks: list[Task]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for task in tasks:
        rows: dict[str, Any] = {}
        for name in CONTENDERS:
            mine = [r for r in runs if r["task"] == task.name and r["contender"] == name]
            if not mine:
                continue
            steps = sorted({int(s) for r in mine for s in r["curve"]})
            values = {s: [r["curve"][str(s)] for r in mine] for s in steps}
            final = values[steps[-1]]
            rows[name] = {
                "family": CONTENDERS[name].family,
                "trainable_parameters": mine[0].get("trainable_parameters"),
                "adapter_bytes": mine[0].get("adapter_bytes"),
                "seeds": len(mine),
                "final_mean": statistics.mean(final),
                "final_std": statistics.stdev(final) if len(final) > 1 else 0.0,
                "final_by_seed": {r["seed"]: r["curve"][str(steps[-1])] for r in mine},
                "curve_mean": {s: statistics.mean(v) for s, v in values.items()},
                "curve_std": {s: statistics.stdev(v) if len(v) > 1 else 0.0 for s, v in values.items()},
            }
        summary[task.name] = {"metric": task.metric, "contenders": rows}
    return summary


def _best(rows: dict[str, Any], family: str, metric: str, full: bool = False) -> tuple[str, float] | None:
    """The family's best contender by its mean; ``full``: among those run over as many seeds as any contender (ours
    are chosen that way, so that a lucky single seed cannot stand for them; PEFT's best is any of them)."""
    most = max((r["seeds"] for r in rows.values()), default=0)
    mine = {n: r["final_mean"] for n, r in rows.items() if r["family"] == family and (not full or r["seeds"] == most)}
    if not mine:
        return None
    name = (max if metric == "accuracy" else min)(mine, key=mine.__getitem__)
    return name, mine[name]


def _compare(metric: str, ours: float, peft: float) -> tuple[float, str, bool]:
    """Our value against PEFT's: (difference in points, or loss ratio), its unit, and whether ours is at least as
    good."""
    if metric == "accuracy":
        return 100 * (ours - peft), "points", ours >= peft
    return ours / peft, "x", ours <= peft


def _paired(metric: str, ours: dict[str, Any], peft: dict[str, Any]) -> dict[str, Any]:
    """Seed by seed (the same batches for both): on how many of the shared seeds ours did better."""
    seeds = sorted(set(ours["final_by_seed"]) & set(peft["final_by_seed"]))
    better = [
        (ours["final_by_seed"][s] > peft["final_by_seed"][s])
        if metric == "accuracy"
        else (ours["final_by_seed"][s] < peft["final_by_seed"][s])
        for s in seeds
    ]
    return {"seeds": len(seeds), "ours_better": sum(better)}


def figures(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets per task: our deep prompt against PEFT's best prompt method (>= 5 points on a
    classification, a lower loss on generation) and against LoRA (within 3 points); our input-level best and the
    default against PEFT's best."""
    result = []
    for task_name, task in summary.items():
        rows, metric = task["contenders"], task["metric"]
        peft = _best(rows, "peft", metric)
        if peft is None:
            continue
        classification = metric == "accuracy"
        for family, label in (("peft_ext_deep", "best deep"), ("peft_ext", "best input-level")):
            ours = _best(rows, family, metric, full=True)
            if ours is None:
                continue
            value, unit, _ = _compare(metric, ours[1], peft[1])
            target, met = (">= 5", value >= 5) if classification else ("< 1", value < 1)
            name = f"{task_name}: {label} ({ours[0]}) vs PEFT's best prompt method ({peft[0]})"
            result.append({**figure(name, value, unit, target, met), **_paired(metric, rows[ours[0]], rows[peft[0]])})
        deep, lora = _best(rows, "peft_ext_deep", metric, full=True), _best(rows, "lora", metric)
        if classification and deep is not None and lora is not None:
            value = 100 * (deep[1] - lora[1])
            name = f"{task_name}: best deep ({deep[0]}) vs {lora[0]}"
            result.append(
                {**figure(name, value, "points", ">= -3", value >= -3), **_paired(metric, rows[deep[0]], rows[lora[0]])}
            )
        if DEFAULT in rows:
            value, unit, met = _compare(metric, rows[DEFAULT]["final_mean"], peft[1])
            target = ">= 0" if classification else "<= 1"
            name = f"{task_name}: peft-ext train's default ({DEFAULT}) vs PEFT's best ({peft[0]})"
            result.append({**figure(name, value, unit, target, met), **_paired(metric, rows[DEFAULT], rows[peft[0]])})
    return result


def table(summary: dict[str, Any], costs: dict[str, float] | None) -> str:
    """A markdown table: each contender's final held-out metric (mean ± std over its seeds) per task, and its cost."""
    names = list(dict.fromkeys(name for task in summary.values() for name in task["contenders"]))
    head = " | ".join(f"{name} {task['metric']} (seeds)" for name, task in summary.items())
    lines = [
        f"| contender | {head} | trainable | adapter KB | s/step | vs matching PEFT |",
        "|---" * (len(summary) + 5) + "|",
    ]
    for name in names:
        cells = []
        for task in summary.values():
            row = task["contenders"].get(name)
            cells.append(f"{row['final_mean']:.3f} ± {row['final_std']:.3f} ({row['seeds']})" if row else "n/a")
        cost = f"{costs[name]:.2f}" if costs and name in costs else ""
        matches = CONTENDERS[name].matches
        ratio = f"{costs[name] / costs[matches]:.2f}x ({matches})" if costs and matches in costs else ""
        label = f"**{name}** (default)" if name == DEFAULT else name
        sized = next((t["contenders"][name] for t in summary.values() if name in t["contenders"]), {})
        params = f"{sized['trainable_parameters']:,}" if sized.get("trainable_parameters") is not None else ""
        size = f"{sized['adapter_bytes'] / 1024:.0f}" if sized.get("adapter_bytes") is not None else ""
        lines.append(f"| {label} | {' | '.join(cells)} | {params} | {size} | {cost} | {ratio} |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for task in summary.values() for name in task["contenders"]))
    colours = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xh<>pd8H"
    look = {name: (colours[i % len(colours)], markers[i % len(markers)]) for i, name in enumerate(names)}
    figure_, axes = plt.subplots(1, len(summary), figsize=(6.5 * len(summary), 6), squeeze=False)
    for axis, (task_name, task) in zip(axes[0], summary.items(), strict=True):
        for name, row in task["contenders"].items():
            steps = sorted(int(s) for s in row["curve_mean"])
            mean = [row["curve_mean"][s] for s in steps]
            std = [row["curve_std"][s] for s in steps]
            style = {"peft": "--", "none": ":", "peft_ext": "-", "peft_ext_deep": "-", "lora": "-."}[row["family"]]
            colour, marker = look[name]
            axis.plot(steps, mean, style, color=colour, marker=marker, markersize=4, label=name)
            axis.fill_between(
                steps,
                [m - s for m, s in zip(mean, std, strict=True)],
                [m + s for m, s in zip(mean, std, strict=True)],
                color=colour,
                alpha=0.08,
            )
        seeds = max(row["seeds"] for row in task["contenders"].values())
        title = f"{task_name}: mean of {seeds} seeds (±1 std); dashed: stock PEFT, dash-dot: LoRA"
        axis.set(xlabel="training step (batch 8)", ylabel=f"held-out {task['metric']}", title=title)
        axis.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure_.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    figure_.tight_layout(rect=(0, 0.14, 1, 1))
    figure_.savefig(path, dpi=110)
    plt.close(figure_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, help="train this one seed only (to share runs out between processes)")
    parser.add_argument("--no-cost", action="store_true", help="skip the per-step cost measurement")
    parser.add_argument(
        "--no-training", action="store_true", help="train nothing: summarise the runs recorded so far (and cost)"
    )
    args = parser.parse_args()
    tasks = [TASKS[name]() for name in args.tasks.split(",")]
    names = args.contenders.split(",")
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {list(CONTENDERS)}")
    RESULTS.mkdir(exist_ok=True)
    done = _done()
    # seed by seed, so that a stopped run leaves every contender measured alike
    seeds = [] if args.no_training else [args.seed] if args.seed is not None else list(range(args.seeds))
    for seed in seeds:
        for task in tasks:
            for name in names:
                contender = CONTENDERS[name]
                if (contender.needs_choices and task.choices is None) or (contender.config is None and seed > 0):
                    continue
                key = _key(task.name, name, seed)
                if key in done:
                    continue
                record = {"key": key, **run(task, name, seed)}
                with RUNS.open("a", encoding="utf-8") as file:
                    file.write(json.dumps(record) + "\n")
                done[key] = record
                print(f"{task.name} / {name} / seed {seed}: {record['curve']}")
    current = [r for r in done.values() if r["contender"] in CONTENDERS]
    runs = [r for r in current if r["key"] == _key(r["task"], r["contender"], r["seed"])]  # this protocol's runs
    summary = summarise(runs, tasks)
    result: dict[str, Any] = {"protocol": {**PROTOCOL, "eval_every": EVAL_EVERY, "seeds": args.seeds}, "tasks": summary}
    if not args.no_cost:
        fits = [n for n in names if tasks[0].choices is not None or not CONTENDERS[n].needs_choices]
        trained = [n for n in fits if CONTENDERS[n].config is not None]
        costs = step_costs(tasks[0], trained)
        result["seconds_per_step"] = costs
        result["cost_vs_matching_peft"] = {
            n: costs[n] / costs[CONTENDERS[n].matches] for n in trained if CONTENDERS[n].matches in costs
        }
    result["figures"] = figures(summary)
    plot(summary, RESULTS / "quality.png")
    write_result("quality", result)
    for item in result["figures"]:
        print(f"{item['name']}: ours better on {item['ours_better']} of {item['seeds']} shared seeds")
    print(table(summary, result.get("seconds_per_step")))


if __name__ == "__main__":
    main()
