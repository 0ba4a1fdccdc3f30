"""Strict semantic versions (``MAJOR.MINOR.PATCH``) and the constraints ``pull`` accepts.

Constraints: an exact version ``1.2.0`` (matches even a yanked version), ``^1.2`` (compatible: same leftmost
non-zero part, npm rules), ``~1.2`` (same major.minor), and ``latest``. Non-exact constraints skip yanked versions.
Pre-release and build suffixes are not supported: a version is three integers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import InvalidConstraintError, InvalidVersionError

_NUM = r"(?:0|[1-9][0-9]{0,8})"
_SEMVER = re.compile(rf"({_NUM})\.({_NUM})\.({_NUM})")
_PARTIAL = re.compile(rf"({_NUM})(?:\.({_NUM})(?:\.({_NUM}))?)?")
BUMPS = ("patch", "minor", "major")


@dataclass(frozen=True, order=True)
class SemVer:
    """A version ``major.minor.patch``; ordered numerically."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: object) -> SemVer:
        """Parse ``"1.2.0"``; raise :class:`InvalidVersionError` for anything else (``v1.2``, ``01.2.0``, ...)."""
        match = _SEMVER.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidVersionError(
                f"Invalid version {text!r}: expected MAJOR.MINOR.PATCH with plain integers, e.g. '1.2.0'."
            )
        return cls(*(int(g) for g in match.groups()))

    def bump(self, part: str) -> SemVer:
        """The next version after this one for ``part`` in ``patch``, ``minor``, ``major``."""
        if part == "patch":
            return SemVer(self.major, self.minor, self.patch + 1)
        if part == "minor":
            return SemVer(self.major, self.minor + 1, 0)
        if part == "major":
            return SemVer(self.major + 1, 0, 0)
        raise InvalidVersionError(f"Invalid bump {part!r}: expected one of {', '.join(BUMPS)}.")

    @property
    def tag_suffix(self) -> str:
        return f"v{self}"

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


FIRST_VERSION = SemVer(1, 0, 0)


def next_version(existing: Iterable[SemVer], version: SemVer | None, bump: str) -> SemVer:
    """The version a push creates: ``version`` if given, else ``bump`` of the highest existing one (first: 1.0.0)."""
    if bump not in BUMPS:
        raise InvalidVersionError(f"Invalid bump {bump!r}: expected one of {', '.join(BUMPS)}.")
    if version is not None:
        return version
    highest = max(existing, default=None)
    return FIRST_VERSION if highest is None else highest.bump(bump)


@dataclass(frozen=True)
class Constraint:
    """A parsed version constraint; ``low`` inclusive, ``high`` exclusive, both ``None`` for ``latest``."""

    text: str
    exact: bool
    low: SemVer | None
    high: SemVer | None

    @classmethod
    def parse(cls, text: object) -> Constraint:
        """Parse ``"1.2.0"``, ``"^1.2"``, ``"~1.2.3"`` or ``"latest"``; raise :class:`InvalidConstraintError`."""
        if not isinstance(text, str):
            raise InvalidConstraintError(f"Invalid version constraint {text!r}: expected a string.")
        spec = text.strip()
        if spec == "latest":
            return cls(spec, False, None, None)
        if spec[:1] in ("^", "~"):
            match = _PARTIAL.fullmatch(spec[1:])
            if match is None:
                raise _bad_constraint(text)
            parts = [int(g) for g in match.groups() if g is not None]
            low = SemVer(*(parts + [0] * (3 - len(parts))))
            return cls(spec, False, low, _upper(spec[0], parts))
        try:
            version = SemVer.parse(spec)
        except InvalidVersionError:
            raise _bad_constraint(text) from None
        return cls(spec, True, version, version.bump("patch"))

    def matches(self, version: SemVer) -> bool:
        if self.low is not None and version < self.low:
            return False
        return self.high is None or version < self.high

    def select(self, versions: Iterable[tuple[SemVer, bool]]) -> SemVer | None:
        """The highest ``(version, yanked)`` that matches; yanked ones only for an exact constraint."""
        ok = [v for v, yanked in versions if self.matches(v) and (self.exact or not yanked)]
        return max(ok, default=None)

    def __str__(self) -> str:
        return self.text


def _upper(op: str, parts: list[int]) -> SemVer:
    major = parts[0]
    if op == "~":
        return SemVer(major + 1, 0, 0) if len(parts) == 1 else SemVer(major, parts[1] + 1, 0)
    # caret: bump the leftmost non-zero part among those given (npm semantics)
    if major > 0 or len(parts) == 1:
        return SemVer(major + 1, 0, 0)
    if parts[1] > 0 or len(parts) == 2:
        return SemVer(0, parts[1] + 1, 0)
    return SemVer(0, 0, parts[2] + 1)


def _bad_constraint(text: str) -> InvalidConstraintError:
    return InvalidConstraintError(
        f"Invalid version constraint {text!r}: expected an exact version '1.2.0', '^1.2' (compatible), "
        "'~1.2' (same minor) or 'latest'."
    )
