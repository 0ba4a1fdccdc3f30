"""``peft-ext serve`` (the OpenAI-compatible server) and ``peft-ext generate`` (one-shot, through the same service).

Both reach the ``peft-ext`` command through the ``peft_ext.cli`` entry points; ``python -m peft_ext.serving.cli``
runs them on their own. Nothing heavy is imported until a command runs, so ``peft-ext --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import InvalidConfigError, MissingExtraError

API_KEY_ENV = "PEFT_EXT_API_KEY"
# The server's connection timeouts (defined here, where --help shows them without importing the HTTP stack).
DEFAULT_REQUEST_TIMEOUT_S = 10.0
DEFAULT_KEEP_ALIVE_S = 5.0  # uvicorn's own default


def register_serve(commands: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "serve",
        help="serve soft prompts on one base model over an OpenAI-compatible HTTP API",
        description="Serve the base model and every soft prompt given (and any store reference a request names) at "
        "/v1/completions, /v1/chat/completions and /v1/models, with /health and /metrics. Needs the 'serve' extra "
        "(pip install 'peft-ext[serve]').",
    )
    _model_arguments(parser, prompts="NAME=FOLDER_OR_REF")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000; 0: any free one)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' on every route but /health (default: ${API_KEY_ENV}, which is "
        "better: a key on the command line shows in 'ps'; unset: no key)",
    )
    parser.add_argument("--max-running", type=int, default=32, help="requests decoded together (default: 32)")
    parser.add_argument("--max-queued", type=int, default=256, help="requests waiting beyond those (default: 256)")
    parser.add_argument(
        "--served-model-name",
        help="what /v1/models and responses call the base model (default: --base's id, or its folder's name)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        metavar="SECONDS",
        help="close a connection that has not sent a whole request within this (default: %(default)s)",
    )
    parser.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=DEFAULT_KEEP_ALIVE_S,
        metavar="SECONDS",
        help="close a connection idle between requests after this (default: %(default)s)",
    )
    parser.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json (behind the API key)")
    parser.set_defaults(handler=_serve)
    return parser


def register_generate(commands: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "generate",
        help="complete texts with a soft prompt (no server)",
        description="Complete each text with one soft prompt (or the bare base model), through the same service as "
        "'peft-ext serve'; prints one completion per text.",
    )
    _model_arguments(parser, prompts=None)
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="text to complete")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens to generate at most (default: 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (the default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1)")
    parser.add_argument("--seed", type=int, help="seed of the sampling (with --temperature > 0)")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end at this text (repeatable)")
    parser.set_defaults(handler=_generate)
    return parser


def _model_arguments(parser: argparse.ArgumentParser, prompts: str | None) -> None:
    parser.add_argument("--base", help="base model: local folder or Hugging Face id (default: embedded SmolLM2-135M)")
    if prompts is None:
        parser.add_argument("--prompt", metavar="FOLDER_OR_REF", help="adapter folder or repo:task@version")
    else:
        parser.add_argument(
            "--prompt",
            action="append",
            default=[],
            type=_named_source,
            metavar=prompts,
            help="serve this adapter folder or store reference (repo:task@^1.2) as NAME (repeatable)",
        )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16", "auto"),
        default="float32",
        help="the base model's precision (default float32; auto: bfloat16 where the CPU or GPU computes in it). "
        "Answers are exact within a dtype: every row equals the same request alone in that dtype.",
    )
    parser.add_argument("--store", choices=("local", "hf"), default="local", help="where references are pulled from")
    parser.add_argument("--root", help="LocalStore folder (default: $PEFT_EXT_HUB_ROOT or the user cache)")
    parser.add_argument("--endpoint", help="Hub URL for --store hf (default: huggingface_hub's, HF_ENDPOINT)")


def _named_source(value: str) -> tuple[str, str]:
    name, sep, source = value.partition("=")
    if not sep or not name or not source:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER_OR_REF, got {value!r}")
    return name, source


def _service(args: argparse.Namespace, **options: Any) -> Any:
    from ..base_models import EMBEDDED_DEFAULT, load_base_model, resolve_dtype
    from ..base_ref import public_id
    from ..engine.packed_linear import pack_linears
    from .service import Service

    if args.store == "hf":
        from huggingface_hub import get_token

        from hub.stores.hf import HfStore

        store: Any = HfStore(endpoint=args.endpoint, token=get_token())
    else:
        from hub.stores.local import LocalStore

        store = LocalStore(args.root)
    model, tokenizer, _ = load_base_model(args.base, dtype=resolve_dtype(args.dtype))
    pack_linears(model)  # the model is this command's own, for inference only
    name = getattr(args, "served_model_name", None) or public_id(args.base) or EMBEDDED_DEFAULT
    return Service(model, tokenizer, base_name=name, store=store, **options)


def _serve(args: argparse.Namespace) -> int:
    try:
        from .server import Server, bind
    except ImportError as error:
        raise MissingExtraError(
            f"peft-ext serve needs the 'serve' extra ({error.name or error} is missing): pip install 'peft-ext[serve]'."
        ) from None

    if args.max_running < 1 or args.max_queued < 0:
        raise InvalidConfigError("--max-running must be at least 1 and --max-queued at least 0.")
    if args.api_key is not None and not args.api_key.strip():
        raise InvalidConfigError(
            f"The API key is empty (--api-key or ${API_KEY_ENV}): nobody could use the server. Set a key, or unset "
            f"{API_KEY_ENV} to serve without one."
        )
    if args.api_key is not None and args.api_key != args.api_key.strip():
        raise InvalidConfigError(
            f"The API key (--api-key or ${API_KEY_ENV}) has whitespace around it (a newline from a file?): no "
            "client would send it. Strip it."
        )
    if args.request_timeout <= 0 or args.keep_alive_timeout <= 0:
        raise InvalidConfigError("--request-timeout and --keep-alive-timeout must be positive numbers of seconds.")
    sock = bind(args.host, args.port)  # first: a port in use fails before the model loads
    service = _service(args, max_running=args.max_running, max_queued=args.max_queued)
    try:
        for name, source in args.prompt:
            service.add(name, source)
        server = Server(
            service,
            sock,
            api_key=args.api_key,
            docs=args.docs,
            request_timeout_s=args.request_timeout,
            keep_alive_s=args.keep_alive_timeout,
        )
    except BaseException:
        service.shutdown(drain=False)
        raise
    names = ", ".join(service.prompts.names) or "none yet (requests may name store references)"
    key = "; API key required" if args.api_key else ""
    print(f"peft-ext serve: {server.url}/v1 (base model {service.base_name!r}; prompts: {names}{key})", flush=True)
    server.run()
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .sampling import SamplingParams

    service = _service(args, max_running=max(1, len(args.texts)))
    try:
        model = service.base_name if args.prompt is None else service.add("prompt", args.prompt)
        params = SamplingParams(
            max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
        )
        choices = service.generate(model, args.texts, params, stop=args.stop, limit=args.max_tokens)
    finally:
        service.shutdown(drain=False)
    for choice in choices:
        print(choice.text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``serve`` and ``generate`` without the rest of the ``peft-ext`` command."""
    from ..cli import run

    parser = argparse.ArgumentParser(prog="peft-ext")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_serve(commands)
    register_generate(commands)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
