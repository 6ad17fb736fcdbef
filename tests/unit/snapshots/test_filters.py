"""List filters' `~=` is matched by RE2, in containerd's (Go's) syntax: linear in the text
whatever the pattern, and a pattern RE2 cannot take is InvalidArgument."""

from __future__ import annotations

import pytest

from reconciler.snapshots import InvalidArgument, Kind
from reconciler.snapshots.filters import Matcher
from reconciler.snapshots.model import Info


def _info(name: str, **labels: str) -> Info:
    return Info(name=name, kind=Kind.COMMITTED, labels=labels)


def test_a_catastrophic_pattern_against_a_long_key_finds_no_match() -> None:
    """`^(a+)+$` against 10,000 `a`s and a `!` answers "no match" (a backtracking engine
    would not finish in the life of the universe), and still matches where it should."""
    matcher = Matcher(['name~="^(a+)+$"'])
    assert not matcher(_info("a" * 10_000 + "!"))
    assert not matcher(_info("a" * 30 + "!"))
    assert matcher(_info("a" * 10_000))


def test_a_catastrophic_pattern_on_a_label_finds_no_match() -> None:
    """The same holds for a label's value, written as a /regexp/."""
    matcher = Matcher([r"labels.tier~=/^(\w+\s?)*$/"])
    assert not matcher(_info("x", tier="gold " * 5_000 + "!"))
    assert matcher(_info("x", tier="gold silver"))


@pytest.mark.parametrize(("pattern", "why"), [
    (r"(a)\1", "a backreference"),
    ("a(?=b)", "a lookahead"),
    ("(?<!a)b", "a lookbehind"),
    ("a++", "a possessive repetition"),
    ("a{1001}", "a repetition over 1000"),
    ("(", "an unclosed group"),
    (r"\Z", "Python's end of text (RE2 says \\z)"),
])
def test_a_pattern_re2_cannot_take_is_invalid_argument(pattern: str, why: str) -> None:
    """Backreferences, lookarounds and the like, which Go's regexp refuses too, are the
    caller's error: InvalidArgument naming the pattern."""
    with pytest.raises(InvalidArgument, match="bad regular expression") as caught:
        Matcher([f"name~=/{pattern}/"])
    assert repr(pattern) in str(caught.value), why


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("^w[0-9]$", "w1", True),
    (r"^\pL+$", "ωmega", True),
    ("^[[:alpha:]]+$", "abc", True),
    ("(?i)^ABC$", "abc", True),
    ("(?P<x>sha)256", "sha256:1", True),
    # Go's `$` without (?m) is the end of the text only; Python's `re` also matched before
    # a final newline.
    ("a$", "a\n", False),
    (r"a\z", "a", True),
    ("^b", "ab", False),
])
def test_re2_syntax_is_matched_as_go_matches_it(pattern: str, name: str, matches: bool) -> None:
    """Unicode classes, POSIX classes, flags and named groups work; `$` ends the text."""
    assert Matcher([f"name~=/{pattern}/"])(_info(name)) is matches
