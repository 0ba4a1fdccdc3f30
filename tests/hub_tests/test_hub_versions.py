"""Semantic versions and constraints: exact rules plus hypothesis fuzzing of the parsers.

The oracles here never call the code under test: the table of (constraint, version, expected) cases is written by
hand from the npm caret/tilde rules, and the properties compare against ``_oracle_parse``/``_oracle_matches``, which
restate the rules as "the same leading parts, and not below the constraint" on plain tuples (the code under test
computes an exclusive upper bound instead).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.errors import InvalidConstraintError, InvalidVersionError
from hub.names import check_repo, check_task
from hub.versions import Constraint, SemVer, next_version

nums = st.integers(min_value=0, max_value=10**6)
versions = st.builds(SemVer, nums, nums, nums)
# Small numbers, so that versions and constraints drawn together often match (and often sit on a boundary).
small = st.integers(min_value=0, max_value=3)
small_versions = st.builds(SemVer, small, small, small)

# No deadlines and no too-slow health check: the machine running the suite may be busy.
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
# The parser and matching properties cost well under a millisecond an example: run more of them.
MANY = settings(FUZZ, max_examples=500)

ASCII_DIGITS = frozenset("0123456789")


def _oracle_number(part: str) -> bool:
    """A plain integer: ASCII digits, no leading zero, at most 9 digits (the parser's documented bound)."""
    return 0 < len(part) <= 9 and set(part) <= ASCII_DIGITS and (part == "0" or part[0] != "0")


def _oracle_version(text: str) -> tuple[int, int, int] | None:
    parts = text.split(".")
    if len(parts) != 3 or not all(_oracle_number(p) for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def _oracle_parse(text: str) -> tuple[str, tuple[int, ...]] | None:
    """``(op, parts)`` for an accepted constraint (op: ``^``, ``~``, ``=`` exact, ``latest``), else ``None``."""
    spec = text.strip()
    if spec == "latest":
        return "latest", ()
    if spec[:1] in ("^", "~"):
        parts = spec[1:].split(".")
        if not 1 <= len(parts) <= 3 or not all(_oracle_number(p) for p in parts):
            return None
        return spec[0], tuple(int(p) for p in parts)
    version = _oracle_version(spec)
    return None if version is None else ("=", version)


def _oracle_matches(op: str, parts: tuple[int, ...], version: SemVer) -> bool:
    """npm rules as "not below the constraint, and the same leading ``fixed`` parts"."""
    v = (version.major, version.minor, version.patch)
    low = tuple(parts) + (0,) * (3 - len(parts))
    if op == "latest":
        return True
    if op == "=":
        return v == low
    if op == "~":  # ~1 keeps the major, ~1.2 and ~1.2.3 keep major.minor
        fixed = min(len(parts), 2)
    else:  # ^ keeps everything up to the leftmost non-zero part given (all given parts when they are all zero)
        nonzero = [i for i, p in enumerate(parts) if p != 0]
        fixed = nonzero[0] + 1 if nonzero else len(parts)
    return v >= low and v[:fixed] == low[:fixed]


def _constraint_text(op: str, parts: tuple[int, ...]) -> str:
    if op == "latest":
        return "latest"
    return ("" if op == "=" else op) + ".".join(map(str, parts))


# (op, parts) of valid constraints, with small numbers.
constraints = st.one_of(
    st.just(("latest", ())),
    st.tuples(st.just("="), st.tuples(small, small, small)),
    st.tuples(st.sampled_from(["^", "~"]), st.lists(small, min_size=1, max_size=3).map(tuple)),
    # caret and tilde again, led by zeros: where the npm rules differ most (^0.2, ^0.0.3, ~0.1, ...)
    st.tuples(st.sampled_from(["^", "~"]), st.lists(small, min_size=0, max_size=2).map(lambda p: (0, *p))),
    st.tuples(st.sampled_from(["^", "~"]), st.lists(small, min_size=0, max_size=1).map(lambda p: (0, 0, *p))),
)


@st.composite
def near(draw: st.DrawFn, parts: tuple[int, ...]) -> SemVer:
    """A version next to the constraint's lower bound: each part moved by -1..+2, so boundaries are hit often."""
    low = tuple(parts) + (0,) * (3 - len(parts))
    moved = [max(0, p + draw(st.sampled_from([-1, 0, 0, 1, 2]))) for p in low]
    return SemVer(*moved)


@st.composite
def constraint_and_probes(draw: st.DrawFn) -> tuple[tuple[str, tuple[int, ...]], list[SemVer]]:
    op, parts = draw(constraints)
    probes = draw(st.lists(st.one_of(near(parts), small_versions), min_size=1, max_size=8))
    return (op, parts), probes


def _key(version: SemVer) -> tuple[int, int, int]:
    return version.major, version.minor, version.patch


@FUZZ
@given(versions)
def test_version_text_round_trips(version: SemVer) -> None:
    assert SemVer.parse(str(version)) == version
    assert str(version) == f"{version.major}.{version.minor}.{version.patch}"


@FUZZ
@given(versions, versions)
def test_version_order_is_numeric(a: SemVer, b: SemVer) -> None:
    assert (a < b) == ((a.major, a.minor, a.patch) < (b.major, b.minor, b.patch))


# Random text rarely looks like a version: mix in dotted digit groups with the usual mistakes around them.
digit_group = st.one_of(
    st.sampled_from(["", "0", "00", "01", "1", "10", "007", "999999999", "1000000000", "٢", "x"]),
    st.text(alphabet="0123456789", min_size=1, max_size=11),
)
dotted = st.lists(digit_group, min_size=1, max_size=4).map(".".join)
# Three parts, usually valid, sometimes one of them not (a leading zero, a non-ASCII digit, ten digits, ...).
mostly_valid_group = st.one_of(
    st.integers(min_value=0, max_value=999).map(str),
    st.sampled_from(["00", "01", "٢", "１", "1000000000", "", " 1", "1 ", "+1", "-1", "1_0"]),
)
three_parts = st.tuples(mostly_valid_group, mostly_valid_group, mostly_valid_group).map(".".join)
version_like_text = st.one_of(
    st.text(max_size=20),
    three_parts,
    st.text(alphabet="0123456789.", max_size=14),
    st.tuples(st.sampled_from(["", "", "v", " ", "-"]), dotted, st.sampled_from(["", "", " ", "-rc1", "+b", "."])).map(
        "".join
    ),
)


@MANY
@given(version_like_text)
def test_version_parser_accepts_only_strict_semver(text: str) -> None:
    expected = _oracle_version(text)
    try:
        version = SemVer.parse(text)
    except InvalidVersionError:
        assert expected is None, f"{text!r} is a strict version but was refused"
        return
    assert expected is not None, f"{text!r} is not a strict version but was accepted as {version}"
    assert _key(version) == expected and str(version) == text


constraint_like_text = st.one_of(
    st.text(max_size=20),
    st.text(alphabet="^~0123456789. ", max_size=12),
    st.text(alphabet="^~019.latesx*>=-\t", max_size=10),
    st.tuples(
        st.sampled_from(["", "^", "~", "^^", "~^", ">=", " ^", "^ ", "\t~"]), dotted, st.sampled_from(["", " ", "!"])
    ).map("".join),
    st.tuples(st.sampled_from(["", "^", "~", " "]), three_parts).map("".join),
    st.sampled_from(["latest", " latest ", "Latest", "LATEST", "latest!", "lates", "^latest", "*", ""]),
    constraints.map(lambda c: _constraint_text(*c)),
)


@MANY
@given(constraint_like_text, st.data())
def test_constraint_parser_accepts_exactly_the_grammar(text: str, data: st.DataObject) -> None:
    """Accepted iff the grammar says so; then exact-ness and matching agree with the rules; else the named error."""
    expected = _oracle_parse(text)
    try:
        constraint = Constraint.parse(text)
    except InvalidConstraintError:
        assert expected is None, f"{text!r} is a valid constraint but was refused"
        return
    assert expected is not None, f"{text!r} is not a valid constraint but was accepted"
    op, parts = expected
    assert constraint.exact == (op == "=")
    for probe in data.draw(st.lists(st.one_of(near(parts), small_versions), min_size=1, max_size=6)):
        assert constraint.matches(probe) == _oracle_matches(op, parts, probe), (text, str(probe))


@MANY
@given(constraint_and_probes())
def test_constraint_matching_follows_the_rules(drawn: tuple[tuple[str, tuple[int, ...]], list[SemVer]]) -> None:
    constraint, probes = drawn
    parsed = Constraint.parse(_constraint_text(*constraint))
    for probe in probes:
        assert parsed.matches(probe) == _oracle_matches(*constraint, probe), (str(parsed), str(probe))


@MANY
@given(constraint_and_probes(), st.lists(st.booleans(), min_size=8, max_size=8))
def test_constraint_select_is_highest_match(
    drawn: tuple[tuple[str, tuple[int, ...]], list[SemVer]], yanked_flags: list[bool]
) -> None:
    """The highest matching version, skipping yanked ones unless the constraint is exact."""
    (op, parts), probes = drawn
    pool = list(zip(probes, yanked_flags, strict=False))
    allowed = [v for v, yanked in pool if _oracle_matches(op, parts, v) and (op == "=" or not yanked)]
    expected = max(allowed, key=_key, default=None)
    assert Constraint.parse(_constraint_text(op, parts)).select(pool) == expected


@FUZZ
@given(st.sampled_from(["^", "~", ""]), versions, st.lists(versions, max_size=8))
def test_constraint_select_on_large_versions(op: str, base: SemVer, pool: list[SemVer]) -> None:
    """As above with large numbers, the base itself always in the pool (so something always matches)."""
    pool = [*pool, base]
    parts = (base.major, base.minor, base.patch)
    allowed = [v for v in pool if _oracle_matches(op or "=", parts, v)]
    assert base in allowed
    assert Constraint.parse(f"{op}{base}").select((v, False) for v in pool) == max(allowed, key=_key)


# (constraint, version, expected), written by hand from the npm rules.
CASES = [
    # exact: only that version
    ("1.2.0", "1.2.0", True),
    ("1.2.0", "1.2.1", False),
    ("1.2.0", "1.1.9", False),
    ("1.2.0", "1.3.0", False),
    ("0.0.0", "0.0.0", True),
    ("0.0.0", "0.0.1", False),
    # caret, major > 0: same major, not below
    ("^1", "1.0.0", True),
    ("^1", "1.5.0", True),
    ("^1", "1.99.99", True),
    ("^1", "2.0.0", False),
    ("^1", "0.9.0", False),
    ("^1.2", "1.2.0", True),
    ("^1.2", "1.9.9", True),
    ("^1.2", "1.1.9", False),
    ("^1.2", "2.0.0", False),
    ("^1.2.3", "1.2.3", True),
    ("^1.2.3", "1.3.0", True),
    ("^1.2.3", "1.2.2", False),
    ("^1.2.3", "2.0.0", False),
    ("^2.0.0", "2.0.0", True),
    ("^2.0.0", "1.9.9", False),
    ("^2.0.0", "3.0.0", False),
    # caret, major 0: the minor is the leftmost non-zero part
    ("^0.2", "0.2.0", True),
    ("^0.2", "0.2.99", True),
    ("^0.2", "0.3.0", False),
    ("^0.2", "0.1.9", False),
    ("^0.2.3", "0.2.3", True),
    ("^0.2.3", "0.2.9", True),
    ("^0.2.3", "0.3.0", False),
    ("^0.2.3", "0.2.2", False),
    ("^0.2.3", "1.2.3", False),
    # caret, major and minor 0: the patch is fixed; all-zero partial constraints fix what they give
    ("^0.0.3", "0.0.3", True),
    ("^0.0.3", "0.0.4", False),
    ("^0.0.3", "0.0.2", False),
    ("^0.0.3", "0.1.3", False),
    ("^0.0.0", "0.0.0", True),
    ("^0.0.0", "0.0.1", False),
    ("^0.0", "0.0.0", True),
    ("^0.0", "0.0.9", True),
    ("^0.0", "0.1.0", False),
    ("^0", "0.0.0", True),
    ("^0", "0.9.9", True),
    ("^0", "1.0.0", False),
    # tilde: ~X keeps the major, ~X.Y and ~X.Y.Z keep major.minor
    ("~1", "1.0.0", True),
    ("~1", "1.9.0", True),
    ("~1", "2.0.0", False),
    ("~1", "0.9.9", False),
    ("~1.2", "1.2.0", True),
    ("~1.2", "1.2.7", True),
    ("~1.2", "1.3.0", False),
    ("~1.2", "1.1.0", False),
    ("~1.2.3", "1.2.3", True),
    ("~1.2.3", "1.2.9", True),
    ("~1.2.3", "1.3.0", False),
    ("~1.2.3", "1.2.2", False),
    ("~0", "0.5.0", True),
    ("~0", "1.0.0", False),
    ("~0.0", "0.0.5", True),
    ("~0.0", "0.1.0", False),
    ("~0.2.3", "0.2.5", True),
    ("~0.2.3", "0.3.0", False),
    # latest: everything; surrounding whitespace is ignored
    ("latest", "0.0.0", True),
    ("latest", "99.0.0", True),
    (" ^1.2 ", "1.3.0", True),
    (" ^1.2 ", "2.0.0", False),
    ("\t1.0.0\n", "1.0.0", True),
]


@pytest.mark.parametrize(("spec", "version", "expected"), CASES)
def test_constraint_table(spec: str, version: str, expected: bool) -> None:
    assert Constraint.parse(spec).matches(SemVer.parse(version)) is expected


@pytest.mark.parametrize(("spec", "exact"), [("1.2.0", True), ("^1.2.0", False), ("~1.2.0", False), ("latest", False)])
def test_only_a_plain_version_is_exact(spec: str, exact: bool) -> None:
    assert Constraint.parse(spec).exact is exact


def test_yanked_versions_only_match_exactly() -> None:
    pool = [(SemVer(1, 0, 0), False), (SemVer(1, 1, 0), True)]
    assert Constraint.parse("latest").select(pool) == SemVer(1, 0, 0)
    assert Constraint.parse("^1.0").select(pool) == SemVer(1, 0, 0)
    assert Constraint.parse("1.1.0").select(pool) == SemVer(1, 1, 0)
    assert Constraint.parse("~1.1").select(pool) is None
    assert Constraint.parse("^2").select(pool) is None
    assert Constraint.parse("latest").select([]) is None


@pytest.mark.parametrize("bad", ["", "1.2", "v1.2.0", "01.2.0", "1.2.0-rc1", "1.2.0+b", " 1.2.0", "1.٢.0", "1..0"])
def test_malformed_versions_are_refused(bad: str) -> None:
    with pytest.raises(InvalidVersionError):
        SemVer.parse(bad)


@pytest.mark.parametrize(
    "bad",
    ["", "^", "~~1", ">=1.0", "^1.x", "1.2", "latest!", "^1.2.3.4", "*", "^ 1"]
    + ["Latest", "LATEST", "^01", "~1.٢", "^1.", "~.1", "1.2.0 x", "^1.2.3-rc1", "v1.2.0", "^1000000000"],
)
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
