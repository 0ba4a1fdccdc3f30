"""Share and version soft prompts: per-task semantic versions, pinned to the base model they were trained on.

``push`` a PEFT adapter folder as an immutable version, ``pull`` one by exact version or constraint (``^1.2``) and
get a verified local folder for ``PeftModel.from_pretrained``. Two stores share one interface: :class:`LocalStore`
(the default, a directory) and :class:`HfStore` (a Hugging Face Hub repo, versions tagged ``<task>/v<version>``).
"""

from .api import VersionDetails, pull, push, repair_card, resolve, show, tasks, versions, yank
from .base_ref import BaseModelRef
from .diff import DiffResult, TokenDiff, diff
from .errors import HubError
from .manifest import MANIFEST_FILE, Manifest
from .stores.base import PublishResult, Store, VersionEntry
from .stores.hf import HfStore
from .stores.local import LocalStore
from .versions import Constraint, SemVer

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
    "pull",
    "push",
    "repair_card",
    "resolve",
    "show",
    "tasks",
    "versions",
    "yank",
]
