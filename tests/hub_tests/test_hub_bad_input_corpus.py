"""The bad-input corpus: every case through the API and through the CLI, each with a named error and nothing left.

A case is a bad adapter folder, a bad argument, a bad store option, a bad read request or a damaged stored version.
Through the API it must raise its named :class:`HubError` subclass; through the CLI (``hub.cli.main``, in process)
it must exit 2 with one line ``hub: error: ...`` on stderr, nothing on stdout and no traceback, with the API's very
message where the CLI makes the same call. Either way the store is left as it was (a push writes nothing, not even
a staging folder; a read changes nothing). A few cases also run as real subprocesses of ``peft-ext``.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hub_testutils import REPO, TOKEN, make_adapter
from safetensors.numpy import save_file

import hub
from hub import HfStore, LocalStore
from hub.cli import main
from hub.errors import (
    BaseModelLoadError,
    CorruptAdapterError,
    HubError,
    IntegrityError,
    InvalidAdapterConfigError,
    InvalidAdapterError,
    InvalidArgumentError,
    InvalidBaseModelError,
    InvalidConstraintError,
    InvalidEndpointError,
    InvalidMetadataError,
    InvalidNameError,
    InvalidSourceError,
    InvalidVersionError,
    ManifestError,
    MissingFileError,
    NoMatchingVersionError,
    NonFiniteTensorError,
    NotFoundError,
    PickleRefusedError,
    StoreAccessError,
    TensorDtypeError,
    TensorShapeError,
    UnexpectedFileError,
    UnsupportedPeftTypeError,
)

CONFIG, WEIGHTS, MANIFEST = "adapter_config.json", "adapter_model.safetensors", "peft_ext_manifest.json"
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, as some editors write it


class Env:
    """Folders shared by all cases of the module: adapter variants (built once), an empty store, a seeded one."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.empty_root = base / "empty_store"
        self.seeded_root = base / "seeded_store"
        self.a_file = base / "a_file.txt"
        self.a_file.write_text("not a folder")
        self._folders: dict[str, Path] = {}
        seeded = LocalStore(self.seeded_root)
        hub.push(self.adapter("good"), REPO, task="coach", store=seeded, metrics={"acc": 1.0})
        hub.push(self.adapter("good2", seed=2), REPO, task="coach", store=seeded)
        self.store_root = self.empty_root  # where the current case's store lives

    def adapter(self, key: str, damage: Callable[[Path], object] | None = None, **kwargs: Any) -> Path:
        if key not in self._folders:
            folder = make_adapter(self.base / "adapters" / key, kwargs.pop("seed", 1), **kwargs)
            if damage is not None:
                damage(folder)
            self._folders[key] = folder
        return self._folders[key]

    @property
    def store(self) -> LocalStore:
        return LocalStore(self.store_root)


@dataclass(frozen=True)
class Case:
    id: str
    error: type[HubError]
    api: Callable[[Env], object] | None
    argv: Callable[[Env], list[str]] | None
    reads: bool = False  # runs against the seeded store (else the empty one)
    damage: Callable[[Path], object] | None = None  # applied to a copy of the seeded store's coach/1.0.0
    same_message: bool = True  # the CLI makes the same call, so prints the API's message
    extra: dict[str, Any] = field(default_factory=dict)


CASES: list[Case] = []


def case(id: str, error: type[HubError], api: Any = None, argv: Any = None, **kw: Any) -> None:
    CASES.append(Case(id, error, api, argv, **kw))


# -- adapter folders pushed through both ----------------------------------------------------------------------------


def push_case(id: str, error: type[HubError], damage: Callable[[Path], object] | None = None, **adapter: Any) -> None:
    """A bad adapter folder: ``hub.push(folder, ...)`` and ``hub push folder ...``."""

    def folder(env: Env) -> Path:
        return env.adapter(id, damage, **adapter)

    case(
        f"folder-{id}",
        error,
        api=lambda env: hub.push(folder(env), REPO, task="coach", store=env.store),
        argv=lambda env: ["push", str(folder(env)), REPO, "--task", "coach"],
    )


def write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return damage


def config_with(**change: Any) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        config = json.loads((folder / CONFIG).read_text())
        for key, value in change.items():
            if value is _DROP:
                config.pop(key, None)
            else:
                config[key] = value
        (folder / CONFIG).write_text(json.dumps(config, allow_nan=True))

    return damage


def add_bom(folder: Path) -> None:
    """Put a UTF-8 byte-order mark before an otherwise valid config."""
    (folder / CONFIG).write_bytes(BOM + (folder / CONFIG).read_bytes())


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def make_dir(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()

    return damage


def raw_tensor(dtype: str, nbytes: int, shape: list[int] | None = None) -> Callable[[Path], None]:
    header = json.dumps({"prompt_embeddings": {"dtype": dtype, "shape": shape or [4, 8], "data_offsets": [0, nbytes]}})
    blob = header.encode() + b" " * (-len(header) % 8)
    return write(WEIGHTS, struct.pack("<Q", len(blob)) + blob + b"\x01" * nbytes)


_DROP = object()

# the config file
push_case("no-config", InvalidAdapterError, remove(CONFIG))
push_case("config-is-a-dir", InvalidAdapterError, make_dir(CONFIG))
push_case("config-not-json", InvalidAdapterConfigError, write(CONFIG, "[1, 2"))
push_case("config-empty", InvalidAdapterConfigError, write(CONFIG, ""))
push_case("config-not-utf8", InvalidAdapterConfigError, write(CONFIG, b'{"peft_type": "\xff\xfe"}'))
push_case("config-utf8-bom", InvalidAdapterConfigError, add_bom)
push_case("config-a-list", InvalidAdapterConfigError, write(CONFIG, "[]"))
push_case("config-a-string", InvalidAdapterConfigError, write(CONFIG, '"PROMPT_TUNING"'))
push_case("config-a-number", InvalidAdapterConfigError, write(CONFIG, "4"))
push_case("config-null", InvalidAdapterConfigError, write(CONFIG, "null"))
push_case("config-deeply-nested", InvalidAdapterConfigError, write(CONFIG, "[" * 100_000 + "]" * 100_000))
push_case("config-nested-100", InvalidAdapterConfigError, write(CONFIG, '{"x": ' + "[" * 100 + "]" * 100 + "}"))
push_case("config-NaN", InvalidAdapterConfigError, config_with(token_dim=math.nan))
push_case("config-Infinity", InvalidAdapterConfigError, config_with(token_dim=math.inf))
push_case("config-1e999", InvalidAdapterConfigError, write(CONFIG, '{"peft_type": "PROMPT_TUNING", "x": 1e999}'))
for _id, _value in {
    "missing": _DROP,
    "null": None,
    "int": 1,
    "list": ["PROMPT_TUNING"],
    "NOT_A_PEFT_TYPE": "NOT_A_PEFT_TYPE",
    "LORA": "LORA",
    "lowercase": "prompt_tuning",
    "empty": "",
    "IA3": "IA3",
    "MULTITASK": "MULTITASK_PROMPT_TUNING",
    "CPT": "CPT",
}.items():
    push_case(f"peft_type-{_id}", UnsupportedPeftTypeError, config_with(peft_type=_value))
# A deep prompt is shared too, but one whose config cannot say how its values split into layers is refused.
push_case("peft_type-PREFIX_TUNING-no-layout", InvalidAdapterConfigError, config_with(peft_type="PREFIX_TUNING"))
push_case("placement-deep-no-layout", InvalidAdapterConfigError, config_with(peft_type="SOFT_PROMPT", placement="deep"))
for _field, _values in {
    "num_virtual_tokens": {"str": "4", "float": 4.0, "bool": True, "zero": 0, "negative": -4, "null": None},
    "token_dim": {"str": "8", "float": 8.5, "bool": False, "zero": 0, "negative": -8},
    "num_transformer_submodules": {"str": "1", "zero": 0},
    "num_layers": {"str": "2"},
    "num_attention_heads": {"negative": -1},
}.items():
    for _id, _value in _values.items():
        push_case(f"{_field}-{_id}", InvalidAdapterConfigError, config_with(**{_field: _value}))
push_case("num_virtual_tokens-list", InvalidAdapterConfigError, config_with(num_virtual_tokens=[4]))
push_case("num_virtual_tokens-missing", InvalidAdapterConfigError, config_with(num_virtual_tokens=_DROP))
push_case("token_dim-missing", InvalidAdapterConfigError, config_with(token_dim=_DROP))
push_case("submodules-2-vs-prompt", TensorShapeError, config_with(num_transformer_submodules=2))
for _field, _value in {
    "task_type": "NOT_A_TASK",
    "inference_mode": "yes",
    "base_model_name_or_path": 5,
    "revision": ["main"],
    "tokenizer_kwargs": "x",
    "modules_to_save": [1],
    "prompt_tuning_init_text": 5,
    "peft_version": 1,
    "auto_mapping": "x",
}.items():
    push_case(f"{_field}-wrong-type", InvalidAdapterConfigError, config_with(**{_field: _value}))
push_case("task_type-int", InvalidAdapterConfigError, config_with(task_type=5))

# the weights file
push_case("no-weights", InvalidAdapterError, remove(WEIGHTS))
push_case("weights-is-a-dir", InvalidAdapterError, make_dir(WEIGHTS))
push_case("truncated", CorruptAdapterError, lambda f: (f / WEIGHTS).write_bytes((f / WEIGHTS).read_bytes()[:-7]))
push_case("garbage", CorruptAdapterError, write(WEIGHTS, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"))
push_case("huge-header", CorruptAdapterError, write(WEIGHTS, struct.pack("<Q", 2**40) + b"{}"))
push_case("empty-weights", CorruptAdapterError, write(WEIGHTS, b""))
push_case("header-length-only", CorruptAdapterError, write(WEIGHTS, struct.pack("<Q", 0)))
push_case("header-a-list", CorruptAdapterError, write(WEIGHTS, struct.pack("<Q", 8) + b"[]      "))
push_case("offsets-beyond-data", CorruptAdapterError, raw_tensor("F32", 128, [8, 8]))
push_case(
    "overlapping",
    CorruptAdapterError,
    write(
        WEIGHTS,
        (lambda h: struct.pack("<Q", len(h)) + h + b"\0" * 128)(
            json.dumps(
                {
                    "prompt_embeddings": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]},
                    "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                }
            ).encode()
        ),
    ),
)
push_case("unknown-dtype", CorruptAdapterError, raw_tensor("XYZ", 32))


def _pickle(folder: Path) -> None:
    import torch

    (folder / WEIGHTS).unlink()
    torch.save({"prompt_embeddings": torch.zeros(4, 8)}, folder / "adapter_model.bin")


push_case("pickle", PickleRefusedError, _pickle)
_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "I16": 16, "U16": 16, "I32": 32, "U32": 32, "I64": 64, "U64": 64}
_BITS |= {"F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F4": 4}
_BITS |= {"F6_E2M3": 6, "F6_E3M2": 6, "C64": 64}
for _dtype, _bits in _BITS.items():
    push_case(f"dtype-{_dtype}", TensorDtypeError, raw_tensor(_dtype, 32 * _bits // 8))
push_case("NaN", NonFiniteTensorError, values=np.full((4, 8), np.nan, np.float32))
push_case("plus-Inf", NonFiniteTensorError, values=np.full((4, 8), np.inf, np.float32))
push_case("minus-Inf", NonFiniteTensorError, values=np.full((4, 8), -np.inf, np.float64))
push_case("NaN-in-extra", NonFiniteTensorError, extra={"encoder.w": np.array([1.0, np.nan], np.float32)})
push_case("Inf-in-F16-extra", NonFiniteTensorError, extra={"encoder.b": np.array([np.inf], np.float16)})
push_case("int-extra", TensorDtypeError, extra={"steps": np.zeros(2, np.int64)})
push_case(
    "no-prompt-tensor",
    TensorShapeError,
    lambda f: save_file({"other": np.zeros((4, 8), np.float32)}, str(f / WEIGHTS)),
)
push_case("1-D-prompt", TensorShapeError, values=np.zeros(8, np.float32))
push_case("3-D-prompt", TensorShapeError, values=np.zeros((1, 4, 8), np.float32))
push_case("zero-rows", TensorShapeError, config={"num_virtual_tokens": 1}, values=np.zeros((0, 8), np.float32))
push_case("zero-width", TensorShapeError, values=np.zeros((4, 0), np.float32))
push_case("rows-vs-config", TensorShapeError, n=4, values=np.zeros((5, 8), np.float32))
push_case("width-vs-config", TensorShapeError, dim=8, values=np.zeros((4, 6), np.float32))

# the folder itself
case(
    "folder-missing",
    InvalidAdapterError,
    api=lambda env: hub.push(env.base / "nope", REPO, task="coach", store=env.store),
    argv=lambda env: ["push", str(env.base / "nope"), REPO, "--task", "coach"],
)
case(
    "folder-is-a-file",
    InvalidAdapterError,
    api=lambda env: hub.push(env.a_file, REPO, task="coach", store=env.store),
    argv=lambda env: ["push", str(env.a_file), REPO, "--task", "coach"],
)
case(
    "folder-empty",
    InvalidAdapterError,
    api=lambda env: hub.push(env.base / "empty_dir", REPO, task="coach", store=env.store),
    argv=lambda env: ["push", str(env.base / "empty_dir"), REPO, "--task", "coach"],
)
for _id, _source in {
    "int": 123,
    "none": None,
    "bytes": b"/tmp",
    "float": 1.5,
    "list": ["a"],
    "object": object(),
}.items():
    case(
        f"source-{_id}",
        InvalidSourceError,
        api=lambda env, s=_source: hub.push(s, REPO, task="coach", store=env.store),
    )

# -- names, versions, metadata, base models, stores -----------------------------------------------------------------


def good_push(**kwargs: Any) -> Callable[[Env], object]:
    def run(env: Env) -> object:
        options = {"repo": REPO, "task": "coach", "store": env.store} | kwargs
        return hub.push(env.adapter("good"), options.pop("repo"), **options)

    return run


def good_push_argv(*extra: str, repo: str = REPO, task: str = "coach") -> Callable[[Env], list[str]]:
    return lambda env: ["push", str(env.adapter("good")), repo, f"--task={task}", *extra]


for _task in ["../up", "a/b", "has space", "UPPER", "", "-lead", "x" * 65, "tilde~1", "dot.dot", "new\nline"]:
    case(f"task-{_task[:12]!r}", InvalidNameError, good_push(task=_task), good_push_argv(task=_task))
for _repo in ["org/../x", "a/b/c", "", "org/x.git", "org--x/y", "/abs", "org/", "sp ace/x"]:
    case(f"repo-{_repo!r}", InvalidNameError, good_push(repo=_repo), good_push_argv(repo=_repo))
for _version in ["1.2", "v1.0.0", "01.0.0", "1.0.0-beta", "../1.0.0", "1.0.0.0", " 1.0.0", "latest"]:
    case(
        f"version-{_version!r}",
        InvalidVersionError,
        good_push(version=_version),
        good_push_argv(f"--version={_version}"),
    )
for _id, _kwargs in {"bump": {"bump": "tiny"}, "bump-none": {"bump": None}, "version-int": {"version": 1}}.items():
    case(_id, InvalidVersionError, good_push(**_kwargs))
case("task-none", InvalidNameError, good_push(task=None))
case("repo-int", InvalidNameError, good_push(repo=123))

_METADATA = {
    "hash-int": ({"training_data_hash": 123}, None),
    "hash-bytes": ({"training_data_hash": b"x"}, None),
    "hash-list": ({"training_data_hash": ["a"]}, None),
    "metrics-str": ({"metrics": "x"}, '"x"'),
    "metrics-list": ({"metrics": [1]}, "[1]"),
    "metrics-int": ({"metrics": 1}, "1"),
    "metrics-NaN": ({"metrics": {"loss": math.nan}}, '{"loss": NaN}'),
    "metrics-Inf": ({"metrics": {"loss": math.inf}}, '{"loss": Infinity}'),
    "metrics-minus-Inf": ({"metrics": {"loss": -math.inf}}, '{"loss": -Infinity}'),
    "metrics-nested-NaN": ({"metrics": {"a": {"b": [math.nan]}}}, '{"a": {"b": [1e999]}}'),
    "metrics-int-key": ({"metrics": {1: 2}}, "not json"),
    "metrics-tuple": ({"metrics": {"t": (1, 2)}}, '{"a": 1'),
    "metrics-object": ({"metrics": {"o": object()}}, ""),
    "metrics-set": ({"metrics": {"s": {1, 2}}}, "null"),
    "metrics-deep": ({"metrics": {"d": json.loads("[" * 100 + "]" * 100)}}, '{"d": ' + "[" * 100 + "]" * 100 + "}"),
    "metrics-bytes": ({"metrics": {"b": b"x"}}, '{"a": nan}'),
}
for _id, (_kwargs, _cli) in _METADATA.items():
    case(
        _id,
        InvalidMetadataError,
        good_push(**_kwargs),
        None if _cli is None else good_push_argv("--metrics", _cli),
        same_message=False,
    )

case("base-str", InvalidBaseModelError, good_push(base_model="org/x"))
case("base-int", InvalidBaseModelError, good_push(base_model=123))
case("base-bad-dict", InvalidBaseModelError, good_push(base_model={"hidden_size": "8"}))
case("base-object", InvalidBaseModelError, good_push(base_model=object()))
case("base-cli-missing-path", BaseModelLoadError, argv=good_push_argv("--base-model", "/nonexistent/model"))
case("base-cli-a-file", BaseModelLoadError, argv=lambda env: [*good_push_argv()(env), "--base-model", str(env.a_file)])
case(
    "base-cli-empty-dir",
    BaseModelLoadError,
    argv=lambda env: [*good_push_argv()(env), "--base-model", str(env.base / "empty_dir")],
)
case("store-int", InvalidArgumentError, good_push(store=123))
case(
    "root-is-a-file",
    StoreAccessError,
    api=lambda env: hub.push(env.adapter("good"), REPO, task="coach", store=LocalStore(env.a_file)),
    argv=lambda env: [*good_push_argv()(env), "--root", str(env.a_file)],
)
case(
    "root-under-a-file",
    StoreAccessError,
    api=lambda env: hub.push(env.adapter("good"), REPO, task="coach", store=LocalStore(env.a_file / "sub")),
    argv=lambda env: [*good_push_argv()(env), "--root", str(env.a_file / "sub")],
)
_HF = ["--store", "hf", "--cache-dir", "/nonexistent/cache"]
for _id, _endpoint in {
    "credentials": f"http://user:{TOKEN}@127.0.0.1:9",
    "token-as-user": f"https://{TOKEN}@huggingface.co",
    "ftp": "ftp://127.0.0.1",
    "no-scheme": "not a url",
    "bad-port": "http://127.0.0.1:99999",
    "query": "http://127.0.0.1:9/?token=x",
}.items():
    case(
        f"endpoint-{_id}",
        InvalidEndpointError,
        api=lambda env, e=_endpoint: hub.push(env.adapter("good"), REPO, task="coach", store=HfStore(endpoint=e)),
        argv=lambda env, e=_endpoint: [*good_push_argv()(env), *_HF, "--endpoint", e],
    )
for _id, _value in {"zero": 0, "negative": -1, "nan": math.nan, "inf": math.inf}.items():
    case(
        f"timeout-{_id}",
        InvalidArgumentError,
        api=lambda env, v=_value: HfStore(endpoint="http://127.0.0.1:9", timeout_s=v),
        argv=lambda env, v=_value: [
            "versions",
            REPO,
            "coach",
            *_HF,
            "--endpoint",
            "http://127.0.0.1:9",
            "--timeout",
            str(v),
        ],
        same_message=False,  # the CLI passes a float: "0.0" where the API call says "0"
    )
case("attempts-zero", InvalidArgumentError, api=lambda env: HfStore(endpoint="http://127.0.0.1:9", attempts=0))
case("root-int", InvalidArgumentError, api=lambda env: LocalStore(123))  # type: ignore[arg-type]

# -- read requests against a store holding coach 1.0.0 and 1.0.1 ----------------------------------------------------


def read_case(id: str, error: type[HubError], api: Any, argv: Any = None, **kw: Any) -> None:
    case(id, error, api, argv, reads=True, **kw)


for _spec in ["^1.x", ">=1", "", "latest2", "1.2", "~", "^1.2.3.4", "*"]:
    read_case(
        f"pull-constraint-{_spec!r}",
        InvalidConstraintError,
        lambda env, s=_spec: hub.pull(REPO, "coach", s, store=env.store),
        lambda env, s=_spec: ["pull", REPO, "coach", s],
    )
read_case(
    "pull-missing",
    NotFoundError,
    lambda env: hub.pull(REPO, "coach", "4.0.0", store=env.store),
    lambda env: ["pull", REPO, "coach", "4.0.0"],
)
read_case(
    "pull-no-match",
    NoMatchingVersionError,
    lambda env: hub.pull(REPO, "coach", "^3.0", store=env.store),
    lambda env: ["pull", REPO, "coach", "^3.0"],
)
read_case(
    "pull-unknown-task",
    NoMatchingVersionError,
    lambda env: hub.pull(REPO, "other", store=env.store),
    lambda env: ["pull", REPO, "other"],
)
read_case(
    "pull-bad-task",
    InvalidNameError,
    lambda env: hub.pull(REPO, "A/B", store=env.store),
    lambda env: ["pull", REPO, "A/B"],
)
read_case(
    "pull-bad-repo",
    InvalidNameError,
    lambda env: hub.pull("../x", "coach", store=env.store),
    lambda env: ["pull", "../x", "coach"],
)
read_case(
    "pull-base-str", InvalidBaseModelError, lambda env: hub.pull(REPO, "coach", base_model="org/x", store=env.store)
)
read_case(
    "pull-cli-base-missing",
    BaseModelLoadError,
    None,
    lambda env: ["pull", REPO, "coach", "--base-model", "/nonexistent/m"],
)
read_case(
    "show-missing",
    NoMatchingVersionError,
    lambda env: hub.show(REPO, "coach", "9.9.9", store=env.store),
    lambda env: ["show", REPO, "coach", "9.9.9"],
)
read_case(
    "show-bad-constraint",
    InvalidConstraintError,
    lambda env: hub.show(REPO, "coach", "^x", store=env.store),
    lambda env: ["show", REPO, "coach", "^x"],
)
read_case(
    "versions-bad-task",
    InvalidNameError,
    lambda env: hub.versions(REPO, "A", store=env.store),
    lambda env: ["versions", REPO, "A"],
)
read_case(
    "tasks-bad-repo", InvalidNameError, lambda env: hub.tasks("a/b/c", store=env.store), lambda env: ["tasks", "a/b/c"]
)
read_case(
    "yank-bad-version",
    InvalidVersionError,
    lambda env: hub.yank(REPO, "coach", "1.2", store=env.store),
    lambda env: ["yank", REPO, "coach", "1.2"],
)
read_case(
    "yank-missing",
    NotFoundError,
    lambda env: hub.yank(REPO, "coach", "9.9.9", store=env.store),
    lambda env: ["yank", REPO, "coach", "9.9.9"],
)
read_case(
    "yank-reason-int", InvalidArgumentError, lambda env: hub.yank(REPO, "coach", "1.0.0", reason=123, store=env.store)
)  # type: ignore[arg-type]
read_case(
    "diff-top-k-negative",
    InvalidArgumentError,
    lambda env: hub.diff(env.adapter("good"), env.adapter("good2"), top_k=-1, store=env.store),
    lambda env: ["diff", str(env.adapter("good")), str(env.adapter("good2")), "--top-k", "-1"],
)
read_case(
    "diff-top-k-str", InvalidArgumentError, lambda env: hub.diff(env.adapter("good"), env.adapter("good2"), top_k="3")
)  # type: ignore[arg-type]
read_case(
    "diff-bad-spec",
    InvalidNameError,
    lambda env: hub.diff("nospec", env.adapter("good"), store=env.store),
    lambda env: ["diff", "nospec", str(env.adapter("good"))],
)
read_case(
    "diff-missing-version",
    NotFoundError,
    lambda env: hub.diff(f"{REPO}:coach@9.9.9", env.adapter("good"), store=env.store),
    lambda env: ["diff", f"{REPO}:coach@9.9.9", str(env.adapter("good"))],
)
read_case(
    "diff-widths",
    TensorShapeError,
    lambda env: hub.diff(env.adapter("good"), env.adapter("narrow", dim=6), store=env.store),
    lambda env: ["diff", str(env.adapter("good")), str(env.adapter("narrow", dim=6))],
)
read_case(
    "diff-no-weights",
    InvalidAdapterError,
    lambda env: hub.diff(env.base / "empty_dir", env.adapter("good")),
    lambda env: ["diff", str(env.base / "empty_dir"), str(env.adapter("good"))],
)
read_case("diff-source-int", InvalidArgumentError, lambda env: hub.diff(1, env.adapter("good")))  # type: ignore[arg-type]
read_case(
    "repair-unknown-repo",
    NotFoundError,
    lambda env: hub.repair_card("org/none", store=env.store),
    lambda env: ["repair-card", "org/none"],
)

# -- damaged stored versions: pull refuses them ---------------------------------------------------------------------


def damaged(id: str, error: type[HubError], damage: Callable[[Path], object]) -> None:
    read_case(
        f"stored-{id}",
        error,
        lambda env: hub.pull(REPO, "coach", "1.0.0", store=env.store),
        lambda env: ["pull", REPO, "coach", "1.0.0"],
        damage=damage,
    )


def manifest_edit(edit: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        raw = json.loads((folder / MANIFEST).read_text())
        edit(raw)
        (folder / MANIFEST).write_text(json.dumps(raw))

    return damage


def _swap_weights(folder: Path) -> None:
    other = folder.parent / "1.0.1" / WEIGHTS
    (folder / WEIGHTS).write_bytes(other.read_bytes())


damaged("pickle-dropped-in", UnexpectedFileError, write("adapter_model.bin", b"\x80\x04pickle"))
damaged("subfolder", UnexpectedFileError, lambda f: (f / "extra").mkdir())
damaged("no-manifest", ManifestError, remove(MANIFEST))
damaged("manifest-not-json", ManifestError, write(MANIFEST, "{"))
damaged(
    "manifest-1e999",
    ManifestError,
    # metrics {"acc": 1.0} as pushed becomes 1e999: the old reader took it as inf, which cannot be written back
    lambda f: (f / MANIFEST).write_text((f / MANIFEST).read_text().replace('"acc": 1.0', '"acc": 1e999', 1)),
)
damaged("manifest-deep", ManifestError, write(MANIFEST, "[" * 100_000))
damaged("manifest-utf8-bom", ManifestError, lambda f: (f / MANIFEST).write_bytes(BOM + (f / MANIFEST).read_bytes()))
damaged("manifest-no-weights-entry", ManifestError, manifest_edit(lambda m: m["files"].pop(WEIGHTS)))
damaged(
    "manifest-extra-entry", ManifestError, manifest_edit(lambda m: m["files"].update({"x.bin": m["files"][CONFIG]}))
)
damaged("manifest-other-version", IntegrityError, manifest_edit(lambda m: m.update({"version": "1.0.1"})))
damaged("weights-swapped", IntegrityError, _swap_weights)
damaged("config-altered", IntegrityError, write(CONFIG, "{}"))
damaged("weights-missing", MissingFileError, remove(WEIGHTS))


# -- the runners ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    base = tmp_path_factory.mktemp("corpus")
    (base / "empty_dir").mkdir()
    return Env(base)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture
def prepared(env: Env, request: pytest.FixtureRequest) -> Callable[[Case], Env]:
    def prepare(c: Case) -> Env:
        if c.damage is not None:
            env.store_root = env.base / "damaged" / request.node.name
            shutil.copytree(env.seeded_root, env.store_root)
            c.damage(env.store_root / REPO / "coach" / "1.0.0")
        else:
            env.store_root = env.seeded_root if c.reads else env.empty_root
        return env

    return prepare


def _by_id(which: str) -> list[Any]:
    return [pytest.param(c, id=c.id) for c in CASES if getattr(c, which) is not None]


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 150
    assert sum(c.api is not None for c in CASES) >= 150
    assert sum(c.argv is not None for c in CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("c", _by_id("api"))
def test_api_raises_the_named_error_and_writes_nothing(c: Case, prepared: Callable[[Case], Env]) -> None:
    env = prepared(c)
    before = tree(env.store_root)
    with pytest.raises(c.error) as caught:
        c.api(env)  # type: ignore[misc]
    assert type(caught.value).__module__ in ("hub.errors", "peft_ext.errors")  # a named error, not a bare one
    assert "\n" not in str(caught.value) and TOKEN not in str(caught.value)
    assert tree(env.store_root) == before


@pytest.mark.parametrize("c", _by_id("argv"))
def test_cli_prints_one_line_and_writes_nothing(
    c: Case, prepared: Callable[[Case], Env], capsys: pytest.CaptureFixture[str]
) -> None:
    env = prepared(c)
    before = tree(env.store_root)
    argv = c.argv(env)  # type: ignore[misc]
    if "--store" not in argv and "--root" not in argv:
        argv = [*argv, "--root", str(env.store_root)]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("hub: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and TOKEN not in err
    assert tree(env.store_root) == before
    if c.api is not None and c.same_message:
        with pytest.raises(c.error) as caught:
            c.api(env)
        assert err == f"hub: error: {caught.value}\n"


# the issue's item 7, by name: each is a corpus case above
ITEM7 = [
    "folder-dtype-F8_E8M0",
    "folder-dtype-F4",
    "folder-dtype-F6_E2M3",
    "folder-dtype-F6_E3M2",
    "folder-config-deeply-nested",
    "metrics-NaN",
    "base-cli-missing-path",
    "root-is-a-file",
    "source-int",
    "base-str",
    "diff-top-k-negative",
    "stored-manifest-1e999",
]


@pytest.mark.parametrize("name", ITEM7)
def test_item7_every_listed_input_has_a_named_error(
    name: str, prepared: Callable[[Case], Env], capsys: pytest.CaptureFixture[str]
) -> None:
    c = next(c for c in CASES if c.id == name)
    env = prepared(c)
    if c.api is not None:
        with pytest.raises(c.error):
            c.api(env)
        assert c.reads or not (env.store_root / REPO).exists()  # not even a staging folder
    if c.argv is not None:
        argv = [*c.argv(env), *([] if "--root" in c.argv(env) else ["--root", str(env.store_root)])]
        assert main(argv) == 2
        assert capsys.readouterr().err.count("\n") == 1


BOM_MESSAGE = "starts with a UTF-8 byte-order mark, which PEFT cannot read; save it without one"


def test_item11_a_config_with_a_byte_order_mark_is_refused_by_push(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """PEFT reads ``adapter_config.json`` as text with ``json.load``, which refuses a BOM: push must refuse it too
    (it used to accept it, since ``json.loads`` of bytes drops the BOM, and store a version PEFT could not load)."""
    from peft import PeftConfig

    env.store_root = env.empty_root
    folder = env.adapter("config-utf8-bom", add_bom)
    assert (folder / CONFIG).read_bytes().startswith(BOM)
    with pytest.raises(ValueError, match="BOM"):
        PeftConfig.from_pretrained(str(folder))  # stock PEFT cannot read it: the reason for refusing
    with pytest.raises(InvalidAdapterConfigError, match=BOM_MESSAGE) as caught:
        hub.push(folder, REPO, task="coach", store=env.store)
    assert str(caught.value).startswith(str(folder / CONFIG))
    assert main(["push", str(folder), REPO, "--task", "coach", "--root", str(env.store_root)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"hub: error: {caught.value}\n"
    assert not (env.store_root / REPO).exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["hub", "push", "{good}", REPO, "--task", "coach", "--metrics", '{"loss": NaN}', "--root", "{root}"],
        ["hub", "push", "{bom}", REPO, "--task", "coach", "--root", "{root}"],
        ["hub", "versions", REPO, "coach", "--root", "{a_file}"],
        ["hub", "versions", REPO, "coach", "--store", "hf", "--endpoint", f"http://user:{TOKEN}@127.0.0.1:9"],
    ],
    ids=["nan-metrics", "bom-config", "root-a-file", "endpoint-credentials"],
)
def test_real_subprocess_runs_print_one_line(env: Env, argv: list[str]) -> None:
    values = {"good": str(env.adapter("good")), "root": str(env.empty_root), "a_file": str(env.a_file)}
    values["bom"] = str(env.adapter("config-utf8-bom", add_bom))
    for key, value in values.items():
        argv = [a.replace("{" + key + "}", value) for a in argv]
    command = [sys.executable, "-m", "peft_ext.cli", *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("peft-ext: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and TOKEN not in result.stderr
    assert not (env.empty_root / REPO).exists()
