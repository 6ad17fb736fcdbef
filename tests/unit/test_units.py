"""Sizes are read like containerd reads them: every unit binary."""

from __future__ import annotations

import pytest

from reconciler.specs import Defaults, SpecError, parse_spec
from reconciler.units import (
    MAX_SIZE,
    Bytes,
    SizeError,
    format_size,
    parse_duration,
    parse_size,
    to_sectors,
)
from reconciler.vocabulary import Filesystem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("32KiB", 32 << 10),
        ("32KB", 32 << 10),
        ("32k", 32 << 10),
        ("128MB", 128 << 20),
        ("1GiB", 1 << 30),
        ("1gb", 1 << 30),
        ("32Tb", 32 << 40),
        ("1.5GiB", 3 << 29),
        ("512", 512),
        ("512B", 512),
        (4096, 4096),
    ],
)
def test_sizes_use_binary_units_whatever_the_spelling(text: str | int, expected: int) -> None:
    """"KB", "KiB" and "k" all mean 1024 bytes, as in containerd's go-units."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "1.2.3G", "-5", "1 XB", "1iB", True, 1.5, "0.1B"])
def test_unreadable_sizes_are_refused_with_a_reason(text: object) -> None:
    """Bad sizes raise SizeError whose message shows the value."""
    with pytest.raises(SizeError):
        parse_size(text)


def test_sizes_convert_to_sectors_only_when_whole() -> None:
    """A size that is not a whole number of 512-byte sectors is refused, never rounded."""
    assert to_sectors(parse_size("1GiB")) == 2097152
    with pytest.raises(SizeError, match="multiple"):
        to_sectors(parse_size("1000"))


def test_sizes_render_with_the_largest_exact_unit() -> None:
    """format_size prints "1GiB" for exact values and one decimal otherwise."""
    assert format_size(1 << 30) == "1GiB"
    assert format_size(3 << 29) == "1.5GiB"
    assert format_size(100) == "100B"


@pytest.mark.parametrize("value", [2**63, MAX_SIZE + 1, "1025PiB", "99999999TiB", "9" * 5000])
def test_sizes_above_one_exbibyte_are_refused(value: object) -> None:
    """Nothing larger than MAX_SIZE (1EiB) is a size, so none overflows SQLite or the kernel;
    a string of thousands of digits is refused before int() is asked to read it."""
    with pytest.raises(SizeError):
        parse_size(value)


def test_the_largest_size_is_one_exbibyte() -> None:
    """MAX_SIZE itself, however spelt, is accepted."""
    assert parse_size(MAX_SIZE) == parse_size("1024PiB") == 1 << 60


def test_a_spec_size_above_the_maximum_is_a_spec_error() -> None:
    """Spec files read sizes with parse_size, so a size of 2**63 bytes rejects the spec."""
    with pytest.raises(SpecError, match="size"):
        parse_spec("big", f"size = {2**63}\n",
                   Defaults(size=Bytes(1 << 30), filesystem=Filesystem.EXT4))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 10**400, "1" * 400])
def test_durations_that_are_not_finite_are_refused(value: object) -> None:
    """nan, infinities and numbers beyond a float are no durations."""
    with pytest.raises(SizeError):
        parse_duration(value)
