"""``peft-ext eval``: EleutherAI's lm-evaluation-harness on soft prompts, in process.

Each PROMPT is an adapter folder, a store reference ``repo:task@constraint`` (pulled, and refused unless it was
trained on the base model given), or ``base`` for the bare base model. Every one is evaluated by lm-eval's own
``simple_evaluate`` on the tasks named (lm-eval's, or local task folders: ``--include-path``), through lm-eval's
``HFLM`` over one ``PeftModel`` holding them all, so scores and generations go through peft_ext's exact path, and
each batch of requests is computed for every prompt at once, one prompt per row (``lm_eval_models``).
``--write-tasks DIR`` writes lm-eval tasks built from the packaged data (``tasks.write_lm_eval_tasks``).

An application, like the rest of ``peft_ext.cli``: it uses both the library and ``hub``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from ..errors import InvalidConfigError, MissingExtraError, UnknownTaskError

if TYPE_CHECKING:
    from .lm_eval_models import PromptLM

BASE = "base"  # the PROMPT that means the bare base model (a folder of that name: ./base)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="Evaluate soft prompts (and the bare base model) with lm-evaluation-harness.",
        description="Run lm-evaluation-harness tasks on each PROMPT (an adapter folder, a store reference "
        "repo:task@version pulled and verified against the base model, or 'base' for the bare base model), all in "
        "mixed batches on one base model; print a table of each task's metrics per prompt. Needs the 'eval' extra "
        "(pip install 'peft-ext[eval]').",
    )
    parser.add_argument(
        "prompts",
        nargs="*",
        metavar="PROMPT",
        help=f"adapter folder, store reference repo:task@version, or '{BASE}' (the bare base model)",
    )
    parser.add_argument("--tasks", help="comma-separated lm-eval task names (default with --write-tasks: those)")
    parser.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of lm-eval task YAMLs to find the tasks in (repeatable)",
    )
    parser.add_argument(
        "--write-tasks",
        metavar="DIR",
        help="write lm-eval tasks built from the packaged data into DIR (peft_ext_topics: multiple choice; "
        "peft_ext_authors: generation), each with a train split for 'peft-ext train --label-column label', and "
        "include them",
    )
    parser.add_argument("--model", help="base model: local folder or Hugging Face id (default: embedded SmolLM2-135M)")
    parser.add_argument("--limit", type=int, help="evaluate at most N documents per task")
    parser.add_argument("--num-fewshot", type=int, help="few-shot examples per document (default: each task's)")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="requests per batch and prompt (default 8; a batch holds all prompts)"
    )
    parser.add_argument("--output", metavar="FILE.json", help="write every prompt's results as JSON")
    parser.add_argument("--log-samples", action="store_true", help="with --output: each document's inputs and outputs")
    parser.add_argument("--store-root", help="local store folder for references (default: the user cache)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    include = list(args.include_path)
    written: list[str] = []
    if args.write_tasks:
        from .tasks import write_lm_eval_tasks

        written = write_lm_eval_tasks(args.write_tasks)
        include.append(args.write_tasks)
        print(f"wrote lm-eval tasks {', '.join(written)} to {os.path.abspath(args.write_tasks)}")
    if not args.prompts:
        if written:
            return 0
        raise InvalidConfigError(
            f"Name at least one PROMPT to evaluate: an adapter folder, repo:task@version or {BASE}."
        )
    names = [name.strip() for name in args.tasks.split(",") if name.strip()] if args.tasks else written
    if not names:
        raise InvalidConfigError("Name the tasks to run: --tasks T1,T2 (or --write-tasks DIR for the packaged ones).")
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise InvalidConfigError("--batch-size and --limit must be at least 1.")
    prompts = list(dict.fromkeys(args.prompts))
    for prompt in prompts:  # before anything heavy: a typo fails at once
        _check_spelling(prompt)
    lm_eval, task_manager = _task_manager(names, include)

    from ..base_models import load_base_model

    base, tokenizer, info = load_base_model(args.model)
    resolved = [_resolve(prompt, base, tokenizer, args.store_root) for prompt in prompts]
    sources = list({label: (label, folder) for label, folder in resolved}.values())  # ^1 and 1.0.0 may meet
    models = _prompt_lms(base, tokenizer, sources, args.batch_size)
    results: dict[str, Any] = {}
    for (label, _), lm in zip(sources, models, strict=True):
        results[label] = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=task_manager,
            limit=args.limit,
            num_fewshot=args.num_fewshot,
            batch_size=args.batch_size,
            log_samples=args.log_samples,
        )
    rows = _table(results)
    _print_table(rows, list(results))
    if args.output:
        report = {
            "base_model": info.to_dict(),
            "tasks": names,
            "prompts": [{"prompt": label, "folder": folder} for label, folder in sources],
            "table": rows,
            "results": {label: _jsonable(result) for label, result in results.items()},
        }
        with open(args.output, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=2, default=str)
        print(f"results in {os.path.abspath(args.output)}")
    return 0


def _check_spelling(prompt: str) -> None:
    """A PROMPT must be ``base``, an existing folder or a store reference (``hub``'s error names all three)."""
    if prompt == BASE or os.path.isdir(prompt):
        return
    from hub.names import parse_reference

    parse_reference(prompt)


def _task_manager(names: list[str], include: list[str]) -> tuple[Any, Any]:
    """lm-eval and a TaskManager that knows every task in ``names``: the local folders alone when they hold them all
    (indexing lm-eval's own thousands of tasks takes seconds), else with lm-eval's tasks too."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise MissingExtraError(
            f"peft-ext eval needs the 'eval' extra ({error.name or error} is missing): pip install 'peft-ext[eval]'."
        ) from None
    for folder in include:
        if not os.path.isdir(folder):
            raise InvalidConfigError(f"--include-path {folder}: no such folder of task YAMLs.")
    if include:
        local = TaskManager(include_path=include, include_defaults=False)
        if set(names) <= set(local.all_tasks):
            return lm_eval, local
    manager = TaskManager(include_path=include or None)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        where = f" or in {', '.join(include)}" if include else " (add --include-path DIR for local task YAMLs)"
        raise UnknownTaskError(
            f"Unknown task {', '.join(repr(name) for name in unknown)}: not among lm-eval's tasks{where}."
        )
    return lm_eval, manager


def _resolve(prompt: str, base: Any, tokenizer: Any, store_root: str | None) -> tuple[str, str | None]:
    """``(label, adapter folder)`` of a PROMPT (no folder for the bare base model); a store reference is pulled with
    its base model verified, a folder is checked to fit the base model."""
    if prompt == BASE:
        return BASE, None
    if os.path.isdir(prompt):
        _check_fits(prompt, base)
        return prompt, prompt
    import hub
    from hub.stores.local import LocalStore

    store = LocalStore(store_root)
    repo, task, constraint = hub.parse_reference(prompt)
    version = hub.resolve(repo, task, constraint, store=store)
    folder = hub.pull(repo, task, str(version), base_model=base, tokenizer=tokenizer, store=store)
    return f"{repo}:{task}@{version}", str(folder)


def _check_fits(folder: str, base: Any) -> None:
    """Refuse, by name, an adapter whose prompt cannot enter this base model (trained for another one)."""
    from ..adapter_files import DeepPrompt, check_deep_prompt, check_prompt_tensor, read_adapter_folder
    from ..engine import PromptEngine

    prompt = read_adapter_folder(folder, deep=True).loaded()
    what = f"The adapter in {folder}"
    if isinstance(prompt, DeepPrompt):
        check_deep_prompt(prompt, PromptEngine.of(base).kv_shapes(), what)
    else:
        check_prompt_tensor(prompt, base.get_input_embeddings().weight.shape[1], what)


def _prompt_lms(base: Any, tokenizer: Any, sources: list[tuple[str, str | None]], batch_size: int) -> list[PromptLM]:
    """One lm-eval ``LM`` per prompt, in order. Prompts of one PEFT type share one ``PeftModel`` and one scorer
    (PEFT keeps one type per model); the bare base model joins the first."""
    from peft import PeftModel

    from .. import use_exact_generate
    from ..adapter_files import read_adapter_folder
    from .lm_eval_models import PromptLM, PromptScorer

    groups: dict[str, list[int]] = {}
    for index, (_, folder) in enumerate(sources):
        if folder is not None:
            groups.setdefault(str(read_adapter_folder(folder, deep=True).config["peft_type"]), []).append(index)
    bare = [index for index, (_, folder) in enumerate(sources) if folder is None]
    if not groups:
        groups["base"] = []
    groups[next(iter(groups))] += bare
    lms: dict[int, PromptLM] = {}
    for peft_type, members in groups.items():
        model: Any = base
        adapters: list[str | None] = []
        for index in members:
            folder = sources[index][1]
            if folder is None:
                adapters.append(None)
                continue
            name = f"prompt{index}"
            if model is base:
                model = PeftModel.from_pretrained(base, folder, adapter_name=name)
            else:
                model.load_adapter(folder, adapter_name=name)
            adapters.append(name)
        if model is not base and peft_type != "SOFT_PROMPT":
            use_exact_generate(model)  # stock prompt methods: generate through peft_ext's path too
        scorer = PromptScorer(model.eval(), tokenizer, adapters, batch_size)
        for position, index in enumerate(members):
            lms[index] = PromptLM(scorer, position, sources[index][0])
    return [lms[index] for index in range(len(sources))]


def _metric_name(key: str) -> tuple[str, str] | None:
    """``"acc,none"`` -> ``("acc", "none")``; None for what is not a metric (names, stderr, counts)."""
    metric, sep, filter_name = key.partition(",")
    if not sep or metric.endswith("_stderr"):
        return None
    return metric, filter_name


def _table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, metric, filter): each prompt's value and standard error."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for label, result in results.items():
        for task, metrics in result["results"].items():
            for key, value in metrics.items():
                named = _metric_name(key)
                if named is None or not isinstance(value, (int, float)):
                    continue
                metric, filter_name = named
                row = rows.setdefault(
                    (task, metric, filter_name), {"task": task, "metric": metric, "filter": filter_name, "values": {}}
                )
                stderr = metrics.get(f"{metric}_stderr,{filter_name}")
                row["values"][label] = {"value": value, "stderr": stderr if isinstance(stderr, float) else None}
    return list(rows.values())


def _print_table(rows: list[dict[str, Any]], labels: list[str]) -> None:
    def cell(entry: dict[str, Any] | None) -> str:
        if entry is None:
            return ""
        stderr = f" ± {entry['stderr']:.4f}" if entry["stderr"] is not None else ""
        return f"{entry['value']:.4f}{stderr}"

    header = ["task", "metric", *labels]
    lines = [
        [row["task"], row["metric"] + ("" if row["filter"] == "none" else f" ({row['filter']})")]
        + [cell(row["values"].get(label)) for label in labels]
        for row in rows
    ]
    widths = [max(len(str(line[column])) for line in [header, *lines]) for column in range(len(header))]
    for line in [header, ["-" * width for width in widths], *lines]:
        print("| " + " | ".join(str(text).ljust(width) for text, width in zip(line, widths, strict=True)) + " |")


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's result without what only describes this process (its task objects' configs stay)."""
    keep = ("results", "groups", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "samples")
    return {key: result[key] for key in keep if key in result}
