"""Semantic versions and constraints: exact rules plus hypothesis fuzzing of the parsers."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.errors import InvalidConstraintError, InvalidVersionError
from hub.names import check_repo, check_task
from hub.versions import Constraint, SemVer, next_version

nums = st.integers(min_value=0, max_value=10**6)
versions = st.builds(SemVer, nums, nums, nums)

# No deadlines and no too-slow health check: the machine running the suite may be busy.
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(versions)
def test_version_text_round_trips(version: SemVer) -> None:
    assert SemVer.parse(str(version)) == version


@FUZZ
@given(versions, versions)
def test_version_order_is_numeric(a: SemVer, b: SemVer) -> None:
    assert (a < b) == ((a.major, a.minor, a.patch) < (b.major, b.minor, b.patch))


@FUZZ
@given(st.text(max_size=20))
def test_version_parser_accepts_only_strict_semver(text: str) -> None:
    try:
        version = SemVer.parse(text)
    except InvalidVersionError:
        return
    assert str(version) == text


@FUZZ
@given(st.text(max_size=20))
def test_constraint_parser_raises_only_its_named_error(text: str) -> None:
    try:
        Constraint.parse(text)
    except InvalidConstraintError:
        pass


@FUZZ
@given(st.sampled_from(["^", "~", ""]), versions, st.lists(versions, max_size=8))
def test_constraint_select_is_highest_match(op: str, base: SemVer, pool: list[SemVer]) -> None:
    constraint = Constraint.parse(f"{op}{base}")
    chosen = constraint.select((v, False) for v in pool)
    matching = [v for v in pool if constraint.matches(v)]
    assert chosen == (max(matching) if matching else None)
    if op == "":
        assert matching in ([], [base] * len(matching))


@pytest.mark.parametrize(
    ("spec", "inside", "outside"),
    [
        ("^1.2", ["1.2.0", "1.9.9"], ["1.1.9", "2.0.0"]),
        ("^1.2.3", ["1.2.3", "1.3.0"], ["1.2.2", "2.0.0"]),
        ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "0.2.2"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4", "0.0.2"]),
        ("^1", ["1.0.0", "1.5.0"], ["2.0.0", "0.9.0"]),
        ("~1.2", ["1.2.0", "1.2.7"], ["1.3.0", "1.1.0"]),
        ("~1.2.3", ["1.2.3", "1.2.9"], ["1.3.0", "1.2.2"]),
        ("~1", ["1.0.0", "1.9.0"], ["2.0.0"]),
        ("1.2.0", ["1.2.0"], ["1.2.1", "1.1.9"]),
        ("latest", ["0.0.0", "99.0.0"], []),
    ],
)
def test_constraint_ranges(spec: str, inside: list[str], outside: list[str]) -> None:
    constraint = Constraint.parse(spec)
    assert all(constraint.matches(SemVer.parse(v)) for v in inside)
    assert not any(constraint.matches(SemVer.parse(v)) for v in outside)


def test_yanked_versions_only_match_exactly() -> None:
    pool = [(SemVer(1, 0, 0), False), (SemVer(1, 1, 0), True)]
    assert Constraint.parse("latest").select(pool) == SemVer(1, 0, 0)
    assert Constraint.parse("^1.0").select(pool) == SemVer(1, 0, 0)
    assert Constraint.parse("1.1.0").select(pool) == SemVer(1, 1, 0)


@pytest.mark.parametrize("bad", ["", "1.2", "v1.2.0", "01.2.0", "1.2.0-rc1", "1.2.0+b", " 1.2.0", "1.٢.0", "1..0"])
def test_malformed_versions_are_refused(bad: str) -> None:
    with pytest.raises(InvalidVersionError):
        SemVer.parse(bad)


@pytest.mark.parametrize("bad", ["", "^", "~~1", ">=1.0", "^1.x", "1.2", "latest!", "^1.2.3.4", "*", "^ 1"])
def test_malformed_constraints_are_refused(bad: str) -> None:
    with pytest.raises(InvalidConstraintError):
        Constraint.parse(bad)


def test_next_version_bumps_the_highest() -> None:
    existing = [SemVer(1, 0, 0), SemVer(1, 4, 2)]
    assert next_version([], None, "patch") == SemVer(1, 0, 0)
    assert next_version(existing, None, "patch") == SemVer(1, 4, 3)
    assert next_version(existing, None, "minor") == SemVer(1, 5, 0)
    assert next_version(existing, None, "major") == SemVer(2, 0, 0)
    assert next_version(existing, SemVer(0, 1, 0), "patch") == SemVer(0, 1, 0)
    with pytest.raises(InvalidVersionError):
        next_version(existing, None, "huge")


@pytest.mark.parametrize(
    "bad",
    ["", "a/b", "..", "a..b", "../x", "a b", "a~b", "a^b", "a:b", "a?b", "a*b", "a[b", "a\\b", "A", "-a", "x.lock"],
)
def test_bad_task_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="Invalid task name"):
        check_task(bad)


@pytest.mark.parametrize(
    "bad", ["", "/", "a/b/c", "../x", "a/..", "a//b", "a/b.git", "a--b/c", "-a/b", "a b/c", "a/b/"]
)
def test_bad_repo_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="Invalid repo name"):
        check_repo(bad)


@FUZZ
@given(st.text(max_size=30))
def test_accepted_task_names_are_safe_paths_and_refs(text: str) -> None:
    try:
        check_task(text)
    except ValueError:
        return
    assert "/" not in text and ".." not in text and text == text.lower() and text.isascii() and " " not in text
