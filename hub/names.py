"""Checks for the names that become paths and git refs: repos, tasks and files inside a version.

Task names are deliberately narrow (lowercase ASCII letters, digits, ``-`` and ``_``): they are folder names on
case-insensitive file systems, path components on the Hub and the first part of the git tag ``<task>/v<semver>``,
so anything that could be a path separator, ``..``, a character git refuses in refs, or a case clash is out.
"""

from __future__ import annotations

import re

from .errors import InvalidNameError

_TASK = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")


def check_task(task: object) -> str:
    """Return ``task`` if it is a valid task name, else raise :class:`InvalidNameError`."""
    if not isinstance(task, str) or not _TASK.fullmatch(task):
        raise InvalidNameError(
            f"Invalid task name {task!r}: use 1-64 lowercase ASCII letters, digits, '-' or '_', starting with a "
            "letter or digit (no '/', '..', spaces or other characters)."
        )
    return task


def check_repo(repo: object) -> str:
    """Return ``repo`` if it is ``name`` or ``namespace/name`` with Hub-safe parts, else raise."""
    parts = repo.split("/") if isinstance(repo, str) else []
    ok = 1 <= len(parts) <= 2 and all(
        _REPO_PART.fullmatch(p) and ".." not in p and "--" not in p and not p.endswith(".git") for p in parts
    )
    if not ok:
        raise InvalidNameError(
            f"Invalid repo name {repo!r}: use 'name' or 'namespace/name', each part made of ASCII letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit, without '..' or '--'."
        )
    return str(repo)


def parse_reference(reference: object) -> tuple[str, str, str]:
    """``"repo:task@constraint"`` (``org/prompts:coach@^1.2``) -> ``(repo, task, constraint)``; no ``@`` means
    ``latest``. Repo and task are checked; the constraint is parsed where it is used."""
    repo, sep, rest = reference.rpartition(":") if isinstance(reference, str) else ("", "", "")
    task, _, constraint = rest.partition("@")
    if not sep or not repo or not task:
        raise InvalidNameError(
            f"{reference!r:.80} is neither an existing folder nor a store reference 'repo:task@version' (e.g. "
            "'org/prompts:coach@^1.2')."
        )
    return check_repo(repo), check_task(task), constraint or "latest"


# The files of a stored version besides its manifest: PEFT's CONFIG_NAME and SAFETENSORS_WEIGHTS_NAME, spelled out
# because manifests are read without importing peft (and torch); a test pins them to peft_ext.adapter_files.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
