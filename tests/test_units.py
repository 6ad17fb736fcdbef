"""Sizes are read like containerd reads them: every unit binary."""

from __future__ import annotations

import pytest

from reconciler.units import SizeError, format_size, parse_size, to_sectors


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
