"""What a request's ``model`` names: the base model itself, a prompt loaded by name, or a store reference.

A store reference is ``repo:task@constraint`` (``org/prompts:coach@^1.2``; no ``@`` means ``latest``). On first use
it is resolved to an exact version, pulled, verified (every file's hash, and the base model recorded at push time
against the one served: a prompt for another base is refused), and loaded under its exact name
``repo:task@X.Y.Z``. A constraint is re-resolved after ``refresh_s`` seconds, so a newly pushed version is picked up
without a restart; an exact version never changes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from ..engine.engine import Prompt
from ..errors import AdapterNotFoundError, InvalidConfigError
from ..multi import MultiPromptModel


@dataclass(frozen=True)
class ModelCard:
    """One entry of ``GET /v1/models``."""

    id: str
    kind: str  # "base", "prompt" or "reference"
    version: str | None = None


class PromptRegistry:
    """Names -> prompts for one served base model (``base_name`` serves no prompt)."""

    def __init__(
        self,
        prompts: MultiPromptModel,
        base_name: str,
        *,
        store: Any = None,
        base_ref: Any = None,
        refresh_s: float = 60.0,
    ) -> None:
        self.prompts = prompts
        self.base_name = base_name
        self.store = store
        self.base_ref = base_ref  # hub BaseModelRef of the served model; pulled prompts are checked against it
        self.refresh_s = refresh_s
        self._resolved: dict[str, tuple[str, float]] = {}  # reference -> (exact name, when resolved)
        self._lock = threading.Lock()

    def add(self, name: str, source: Any) -> str:
        """Load a prompt under ``name`` from a folder, a tensor or a store reference; return the name it serves as."""
        if name == self.base_name:
            raise InvalidConfigError(f"{name!r} names the base model; serve the prompt under another name.")
        if isinstance(source, str) and _is_reference(source):
            exact = self._pull(source)
            if name != exact:
                self.prompts.add(name, self.prompts.prompt(exact))
            return name
        self.prompts.add(name, source)
        return name

    def lookup(self, model: str) -> tuple[Prompt | None, str]:
        """The prompt a request's ``model`` names (None for the base model) and the name it is served under."""
        if model == self.base_name:
            return None, model
        if model in self.prompts:
            return self.prompts.row_prompt(model), model
        if _is_reference(model):
            exact = self._exact(model)
            return self.prompts.row_prompt(exact), exact
        raise AdapterNotFoundError(
            f"The model {model!r} does not exist: serve {self.base_name!r}, a loaded prompt "
            f"({', '.join(self.prompts.names) or 'none loaded'}) or a store reference 'repo:task@version'."
        )

    def cards(self) -> list[ModelCard]:
        cards = [ModelCard(self.base_name, "base")]
        for name in self.prompts.names:
            _, _, version = name.rpartition("@") if _is_reference(name) else ("", "", None)
            cards.append(ModelCard(name, "reference" if version else "prompt", version or None))
        return cards

    # --- store references -------------------------------------------------------------------------------------

    def _exact(self, reference: str) -> str:
        with self._lock:
            known = self._resolved.get(reference)
        if known is not None and (time.monotonic() - known[1] < self.refresh_s or _is_exact(reference)):
            if known[0] in self.prompts:
                return known[0]
        return self._pull(reference)

    def _pull(self, reference: str) -> str:
        import hub

        repo, task, constraint = hub.parse_reference(reference)
        version = hub.resolve(repo, task, constraint, store=self.store)
        exact = f"{repo}:{task}@{version}"
        if exact not in self.prompts:
            folder = hub.pull(repo, task, str(version), store=self.store, base_model=self.base_ref)
            self.prompts.add(exact, folder)
        with self._lock:
            self._resolved[reference] = (exact, time.monotonic())
        return exact


def _is_reference(name: str) -> bool:
    return ":" in name and not name.startswith(("/", ".", "~"))


def _is_exact(reference: str) -> bool:
    _, _, version = reference.rpartition("@")
    return version.count(".") == 2 and version.replace(".", "").isdigit()
