"""What a request's ``model`` names: the base model itself, a prompt loaded by name, or a store reference.

A store reference is ``repo:task@constraint`` (``org/prompts:coach@^1.2``; no ``@`` means ``latest``). On first use
it is resolved to an exact version, pulled, verified (every file's hash, and the base model recorded at push time
against the one served: a prompt for another base is refused), and loaded under its exact name
``repo:task@X.Y.Z``. A constraint is re-resolved after ``refresh_s`` seconds, in the background: requests go on with
the version known until the new answer is in, so a newly pushed version is picked up without a restart; an exact
version never changes.

Store lookups never run on a request's path when the answer is known: they run on the registry's own small pool of
threads (``lookup_workers``), one lookup per reference at a time however many requests wait for it (single flight),
and a request waits at most ``lookup_timeout_s`` for one (then 504; the lookup goes on and serves later requests).
The registry is bounded: at most ``max_references`` reference spellings are remembered and at most ``max_pulled``
pulled versions stay loaded (least recently used are forgotten; a forgotten version is pulled again, from the
store's cache, when named again). A ``model`` with whitespace or control characters is refused, never cached.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engine.engine import Prompt
from ..errors import AdapterNotFoundError, InvalidConfigError, InvalidModelNameError, ServerBusyError
from ..multi import MultiPromptModel

MAX_MODEL_CHARS = 256
DEFAULT_MAX_REFERENCES = 1024
DEFAULT_MAX_PULLED = 64
DEFAULT_LOOKUP_WORKERS = 4
DEFAULT_LOOKUP_TIMEOUT_S = 30.0
DEFAULT_MAX_PENDING = 64  # distinct references being looked up at once; more are refused (429)
logger = logging.getLogger(__name__)


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
        max_references: int = DEFAULT_MAX_REFERENCES,
        max_pulled: int = DEFAULT_MAX_PULLED,
        lookup_workers: int = DEFAULT_LOOKUP_WORKERS,
        lookup_timeout_s: float = DEFAULT_LOOKUP_TIMEOUT_S,
        max_pending: int = DEFAULT_MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(max_references, max_pulled, lookup_workers, max_pending) < 1 or lookup_timeout_s <= 0:
            raise InvalidConfigError("The registry's sizes must be at least 1 and its lookup timeout positive.")
        self.prompts = prompts
        self.base_name = base_name
        self.store = store
        self.base_ref = base_ref  # BaseModelRef of the served model; pulled prompts are checked against it
        self.refresh_s, self.lookup_timeout_s = refresh_s, lookup_timeout_s
        self.max_references, self.max_pulled, self.max_pending = max_references, max_pulled, max_pending
        self._clock = clock
        self._resolved: OrderedDict[str, tuple[str, float]] = OrderedDict()  # reference -> (exact name, when)
        self._pulled: OrderedDict[str, None] = OrderedDict()  # exact names loaded from the store, by last use
        self._pending: dict[str, concurrent.futures.Future[str]] = {}  # reference -> its one lookup in flight
        self._pinned: set[str] = set()  # names given to add(): never forgotten
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(lookup_workers, thread_name_prefix="peft-ext-store")

    def add(self, name: str, source: Any) -> str:
        """Load a prompt under ``name`` from a folder, a tensor or a store reference; return the name it serves as."""
        if name == self.base_name:
            raise InvalidConfigError(f"{name!r} names the base model; serve the prompt under another name.")
        with self._lock:
            self._pinned.add(name)
            self._pulled.pop(name, None)
        if isinstance(source, str) and _is_reference(source):
            exact = self.lookup_reference(source).result()
            if name != exact:
                self.prompts.add(name, self.prompts.prompt(exact))
            return name
        self.prompts.add(name, source)
        return name

    def known(self, model: str) -> tuple[Prompt | None, str] | None:
        """Without waiting: the prompt ``model`` names (None for the base model) and the name it is served under, or
        None when a store lookup is needed first. Raises for a ``model`` that can never name anything."""
        if model == self.base_name:
            return None, model
        if model in self.prompts:
            self._touch_pulled(model)
            return self.prompts.row_prompt(model), model
        reference = _canonical(model)
        with self._lock:
            known = self._resolved.get(reference)
            if known is not None:
                self._resolved.move_to_end(reference)
        if known is None:
            if not _is_reference(model):
                raise self._unknown(model)
            return None
        exact, when = known
        try:
            prompt = self.prompts.row_prompt(exact)
        except AdapterNotFoundError:  # forgotten since (the registry's bound): looked up again
            return None
        if not _is_exact(reference) and self._clock() - when >= self.refresh_s:
            # Re-resolved in the background (later, when lookups are at their limit); this request keeps the version.
            with contextlib.suppress(ServerBusyError):
                self.lookup_reference(reference)
        self._touch(exact)
        return prompt, exact

    def lookup(self, model: str) -> tuple[Prompt | None, str]:
        """:meth:`known`, or the store lookup it needs (blocking, at most ``lookup_timeout_s``)."""
        found = self.known(model)
        if found is not None:
            return found
        future = self.lookup_reference(model)
        try:
            exact = future.result(self.lookup_timeout_s)
        except concurrent.futures.TimeoutError:
            raise self.timeout(model) from None
        return self.prompts.row_prompt(exact), exact

    def lookup_reference(self, reference: str) -> concurrent.futures.Future[str]:
        """The one store lookup of ``reference`` in flight (started if none is): its future gives the exact name."""
        canonical = _canonical(reference)
        with self._lock:
            future = self._pending.get(canonical)
            if future is not None:
                return future
            if len(self._pending) >= self.max_pending:
                raise ServerBusyError(
                    f"{len(self._pending)} store lookups are in flight (limit {self.max_pending}); retry shortly."
                )
            future = self._executor.submit(self._pull, canonical)
            self._pending[canonical] = future
        future.add_done_callback(lambda done: self._done(canonical, done))
        return future

    def timeout(self, model: str) -> Exception:
        from hub.errors import RemoteTimeoutError

        return RemoteTimeoutError(
            f"The store did not answer within {self.lookup_timeout_s:g} s for {model!r}; the lookup goes on, "
            "retry shortly."
        )

    def cards(self) -> list[ModelCard]:
        cards = [ModelCard(self.base_name, "base")]
        for name in self.prompts.names:
            _, _, version = name.rpartition("@") if _is_reference(name) else ("", "", None)
            cards.append(ModelCard(name, "reference" if version else "prompt", version or None))
        return cards

    def sizes(self) -> dict[str, int]:
        """How much the registry remembers: reference spellings, pulled versions, lookups in flight."""
        with self._lock:
            return {"references": len(self._resolved), "pulled": len(self._pulled), "pending": len(self._pending)}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- store lookups (on the registry's own threads) ---------------------------------------------------------

    def _pull(self, reference: str) -> str:
        import hub

        repo, task, constraint = hub.parse_reference(reference)
        version = hub.resolve(repo, task, constraint, store=self.store)
        exact = f"{repo}:{task}@{version}"
        if exact not in self.prompts:
            folder = hub.pull(repo, task, str(version), store=self.store, base_model=self.base_ref)
            self.prompts.add(exact, folder)
        with self._lock:
            self._resolved[reference] = (exact, self._clock())
            self._resolved.move_to_end(reference)
            while len(self._resolved) > self.max_references:
                self._resolved.popitem(last=False)
        self._touch(exact)
        return exact

    def _touch_pulled(self, name: str) -> None:
        """Mark a pulled version named exactly as used (prompts given to :meth:`add` are not the registry's)."""
        with self._lock:
            if name in self._pulled:
                self._pulled.move_to_end(name)

    def _touch(self, exact: str) -> None:
        """Mark a pulled version used; forget the least recently used beyond ``max_pulled``."""
        with self._lock:
            if exact in self._pulled:
                self._pulled.move_to_end(exact)
                return
            if exact in self._pinned:
                return
            self._pulled[exact] = None
            forgotten = []
            while len(self._pulled) > self.max_pulled:
                forgotten.append(self._pulled.popitem(last=False)[0])
        for name in forgotten:  # running requests keep their Prompt; a later one pulls the version again
            if name in self.prompts:
                self.prompts.remove(name)

    def _done(self, reference: str, future: concurrent.futures.Future[str]) -> None:
        with self._lock:
            self._pending.pop(reference, None)
            known = self._resolved.get(reference)
            failed = not future.cancelled() and future.exception() is not None
            if failed and known is not None:  # a background refresh failed: keep the version, retry in refresh_s
                self._resolved[reference] = (known[0], self._clock())
        if failed and known is not None:
            logger.warning(
                "Refreshing %s failed (%s); serving %s until the next try", reference, future.exception(), known[0]
            )

    def _unknown(self, model: str) -> AdapterNotFoundError:
        return AdapterNotFoundError(
            f"The model {model!r:.80} does not exist: serve {self.base_name!r}, a loaded prompt "
            f"({', '.join(self.prompts.names[:20]) or 'none loaded'}) or a store reference 'repo:task@version'."
        )


def _canonical(model: str) -> str:
    """The one spelling of a store reference that the registry remembers; refuses what can never be one."""
    if len(model) > MAX_MODEL_CHARS:
        raise InvalidModelNameError(f"model is {len(model)} characters long; at most {MAX_MODEL_CHARS} are allowed.")
    if any(c.isspace() or not c.isprintable() for c in model):
        raise InvalidModelNameError(
            f"model {model!r:.80} contains whitespace or control characters; send the name or reference without them."
        )
    if not _is_reference(model):
        return model
    from hub.names import parse_reference
    from hub.versions import Constraint

    repo, task, constraint = parse_reference(model)
    return f"{repo}:{task}@{Constraint.parse(constraint)}"


def _is_reference(name: str) -> bool:
    return ":" in name and not name.startswith(("/", ".", "~"))


def _is_exact(reference: str) -> bool:
    _, _, version = reference.rpartition("@")
    return version.count(".") == 2 and version.replace(".", "").isdigit()
