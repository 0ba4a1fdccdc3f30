"""Share and version soft prompts: per-task semantic versions, pinned to the base model they were trained on.

``push`` a PEFT adapter folder as an immutable version, ``pull`` one by exact version or constraint (``^1.2``) and
get a verified local folder for ``PeftModel.from_pretrained``. Two stores share one interface: :class:`LocalStore`
(the default, a directory) and :class:`HfStore` (a Hugging Face Hub repo, versions tagged ``<task>/v<version>``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import HubError
from .versions import Constraint, SemVer

if TYPE_CHECKING:
    from peft_ext.base_ref import BaseModelRef

    from .api import VersionDetails, pull, push, repair_card, resolve, show, tasks, yank
    from .compare import DiffResult, TokenDiff, diff
    from .manifest import MANIFEST_FILE, Manifest
    from .stores.base import PublishResult, Store, VersionEntry
    from .stores.hf import HfStore
    from .stores.local import LocalStore

# Loaded on first use, so that ``import hub.versions`` (pure Python) pulls in neither torch nor huggingface_hub.
_LAZY = {
    **dict.fromkeys(["VersionDetails", "pull", "push", "repair_card", "resolve", "show", "tasks", "yank"], "hub.api"),
    "BaseModelRef": "peft_ext.base_ref",
    "parse_reference": "hub.names",
    **dict.fromkeys(["DiffResult", "TokenDiff", "diff"], "hub.compare"),
    **dict.fromkeys(["MANIFEST_FILE", "Manifest"], "hub.manifest"),
    **dict.fromkeys(["PublishResult", "Store", "VersionEntry"], "hub.stores.base"),
    "HfStore": "hub.stores.hf",
    "LocalStore": "hub.stores.local",
}


def versions(repo: str, task: str, *, store: Store | None = None) -> list[VersionEntry]:
    """Every version of ``task``, ascending, yanked ones included and flagged (``hub.api.versions``).

    Defined here because the submodule ``hub.versions`` (semantic versions) shares the name: importing a submodule
    sets the package attribute of that name, which must stay this function.
    """
    from .api import versions as list_versions

    return list_versions(repo, task, store=store)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hub' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [
    "MANIFEST_FILE",
    "BaseModelRef",
    "Constraint",
    "DiffResult",
    "HfStore",
    "HubError",
    "LocalStore",
    "Manifest",
    "PublishResult",
    "SemVer",
    "Store",
    "TokenDiff",
    "VersionDetails",
    "VersionEntry",
    "diff",
    "parse_reference",
    "pull",
    "push",
    "repair_card",
    "resolve",
    "show",
    "tasks",
    "versions",
    "yank",
]
