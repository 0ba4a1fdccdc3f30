"""``peft-ext hub push | pull | versions | tasks | show | diff | yank``.

``register(subparsers)`` is the ``peft_ext.cli`` entry point; handlers raise named errors (the top-level command
prints them as one line). ``python -m hub.cli ...`` runs the same commands on their own. The Hub token is never an
argument (it would land in shell history): it is read as huggingface_hub reads it (``HF_TOKEN`` or the saved login)
and handed to ``HfStore``, which scrubs it from every message.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from peft_ext import strict_json

from ..errors import BaseModelLoadError, InvalidMetadataError, PeftExtError
from ..stores.base import DEFAULT_TIMEOUT_S
from ..versions import BUMPS

if TYPE_CHECKING:
    from ..stores.base import Store

# The stores, the API and what they import (huggingface_hub, torch) load when a command runs, not for --help.


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``hub`` command (with its own subcommands) to an argparse subparsers object."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", choices=("local", "hf"), default="local", help="where versions live")
    common.add_argument("--root", help="LocalStore folder (default: $PEFT_EXT_HUB_ROOT or the user cache)")
    common.add_argument("--endpoint", help="Hub URL for --store hf (default: huggingface_hub's, HF_ENDPOINT)")
    common.add_argument("--cache-dir", help="Hugging Face cache for --store hf (default: HF_HUB_CACHE)")
    common.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds a Hub request may go without progress, for --store hf (default: {DEFAULT_TIMEOUT_S:g})",
    )

    hub = subparsers.add_parser(
        "hub", help="share and version soft prompts", description="Share and version soft prompts."
    )
    commands = hub.add_subparsers(dest="hub_command", required=True, metavar="HUB_COMMAND")

    push = commands.add_parser("push", parents=[common], help="push an adapter folder as a new version")
    push.add_argument("source", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    push.add_argument("repo", help="repo name, e.g. my-org/prompts")
    push.add_argument("--task", required=True, help="task name (lowercase letters, digits, - and _)")
    pin = push.add_mutually_exclusive_group()
    pin.add_argument("--version", help="exact version X.Y.Z (default: bump the latest)")
    pin.add_argument("--bump", choices=BUMPS, default="patch", help="which part to bump (default: patch)")
    push.add_argument("--base-model", help="folder or Hub id of the base model, recorded and fingerprinted")
    push.add_argument("--metrics", help="JSON object of metrics to record")
    push.add_argument("--training-data-hash", help="hash identifying the training data")
    push.add_argument("--allow-pickle", action="store_true", help="accept adapter_model.bin (runs pickle!)")
    push.set_defaults(handler=_push)

    pull = commands.add_parser("pull", parents=[common], help="fetch and verify a version, print its folder")
    _repo_task_version(pull)
    pull.add_argument("--base-model", help="refuse the version unless it was trained on this base model")
    pull.add_argument("--allow-mismatch", action="store_true", help="only warn on a base-model mismatch")
    pull.set_defaults(handler=_pull)

    listing = commands.add_parser("versions", parents=[common], help="list the versions of a task")
    listing.add_argument("repo")
    listing.add_argument("task")
    listing.set_defaults(handler=_versions)

    task_list = commands.add_parser("tasks", parents=[common], help="list the tasks of a repo")
    task_list.add_argument("repo")
    task_list.set_defaults(handler=_tasks)

    show = commands.add_parser("show", parents=[common], help="print a version's manifest as JSON")
    _repo_task_version(show)
    show.set_defaults(handler=_show)

    compare = commands.add_parser("diff", parents=[common], help="compare two soft prompts token by token")
    compare.add_argument("a", help="folder or repo:task@version")
    compare.add_argument("b", help="folder or repo:task@version")
    compare.add_argument("--model", help="base model folder or id, for the nearest vocabulary tokens")
    compare.add_argument("--top-k", type=int, default=5)
    compare.set_defaults(handler=_diff)

    yank = commands.add_parser("yank", parents=[common], help="retire a version (its bytes stay)")
    yank.add_argument("repo")
    yank.add_argument("task")
    yank.add_argument("version", help="exact version X.Y.Z")
    yank.add_argument("--reason")
    yank.add_argument("--undo", action="store_true", help="restore a yanked version")
    yank.set_defaults(handler=_yank)

    repair = commands.add_parser(
        "repair-card", parents=[common], help="rebuild a repo's model card from its versions (after an interruption)"
    )
    repair.add_argument("repo")
    repair.set_defaults(handler=_repair_card)
    return hub


def main(argv: list[str] | None = None) -> int:
    """Run ``hub`` commands without the top-level ``peft-ext`` command."""
    parser = argparse.ArgumentParser(prog="hub")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["hub", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.handler(args) or 0)
    except PeftExtError as error:
        print(f"hub: error: {error}", file=sys.stderr)
        return 2


def _repo_task_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo")
    parser.add_argument("task")
    parser.add_argument("version", nargs="?", default="latest", help="X.Y.Z, ^X.Y, ~X.Y or latest (default)")


def _store(args: argparse.Namespace) -> Store:
    from ..stores.hf import HfStore
    from ..stores.local import LocalStore

    if args.store == "hf":
        from huggingface_hub import get_token

        return HfStore(endpoint=args.endpoint, token=get_token(), cache_dir=args.cache_dir, timeout_s=args.timeout)
    return LocalStore(args.root)


def _load_model(name: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(name)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for a name it cannot load
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BaseModelLoadError(
            f"Could not load the base model {name!r} ({type(exc).__name__}: {reason}); give a model folder or a "
            "Hub id that AutoModelForCausalLM.from_pretrained can load."
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception:  # noqa: BLE001 - a model without a tokenizer is still fingerprinted by its embeddings
        tokenizer = None
    return model, tokenizer


def _push(args: argparse.Namespace) -> int:
    from .. import api

    metrics = None
    if args.metrics is not None:
        try:
            metrics = strict_json.loads(args.metrics)
        except strict_json.StrictJSONError as exc:
            raise InvalidMetadataError(f"--metrics must be a JSON object: {exc}.") from None
        if not isinstance(metrics, dict):
            raise InvalidMetadataError(f"--metrics must be a JSON object, got {args.metrics!r:.80}.")
    store = _store(args)
    model, tokenizer = _load_model(args.base_model) if args.base_model else (None, None)
    result = api.push(
        args.source,
        args.repo,
        task=args.task,
        version=args.version,
        bump=args.bump,
        store=store,
        base_model=model,
        tokenizer=tokenizer,
        metrics=metrics,
        training_data_hash=args.training_data_hash,
        allow_pickle=args.allow_pickle,
    )
    state = "pushed" if result.created else "unchanged (same bytes already stored)"
    print(f"{result.repo} {result.task} {result.version}: {state}\n{result.location}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from .. import api

    store = _store(args)
    model, tokenizer = _load_model(args.base_model) if args.base_model else (None, None)
    folder = api.pull(
        args.repo,
        args.task,
        args.version,
        base_model=model,
        tokenizer=tokenizer,
        allow_mismatch=args.allow_mismatch,
        store=store,
    )
    print(folder)
    return 0


def _versions(args: argparse.Namespace) -> int:
    from .. import api

    for entry in api.versions(args.repo, args.task, store=_store(args)):
        note = f"  yanked{': ' + entry.yank_reason if entry.yank_reason else ''}" if entry.yanked else ""
        print(f"{entry.version}{note}")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from .. import api

    for name in api.tasks(args.repo, store=_store(args)):
        print(name)
    return 0


def _show(args: argparse.Namespace) -> int:
    from .. import api

    details = api.show(args.repo, args.task, args.version, store=_store(args))
    out = {**details.manifest.to_dict(), "yanked": details.yanked, "yank_reason": details.yank_reason}
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def _diff(args: argparse.Namespace) -> int:
    from ..compare import diff

    store = _store(args)
    model, tokenizer = _load_model(args.model) if args.model else (None, None)
    result = diff(args.a, args.b, model=model, tokenizer=tokenizer, top_k=args.top_k, store=store)
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _yank(args: argparse.Namespace) -> int:
    from .. import api

    api.yank(args.repo, args.task, args.version, reason=args.reason, undo=args.undo, store=_store(args))
    print(f"{args.repo} {args.task} {args.version}: {'restored' if args.undo else 'yanked'}")
    return 0


def _repair_card(args: argparse.Namespace) -> int:
    from .. import api

    api.repair_card(args.repo, store=_store(args))
    print(f"{args.repo}: card rebuilt")
    return 0
