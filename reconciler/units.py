"""Units as types, so sectors, bytes and data blocks are never mixed silently.

Sizes enter the program as human text ("1GiB", "32KB") from config and spec files and leave it
as 512-byte sectors in device-mapper tables; this module is the one place that converts.
"""

from __future__ import annotations

import math
import re
from typing import NewType

Bytes = NewType("Bytes", int)
Sectors = NewType("Sectors", int)

SECTOR_SIZE = 512

# The largest size anything may have: 1 EiB. Far inside SQLite's signed 64-bit integers (which
# store sizes) and the kernel's 64-bit sector counts, so no size that passes parse_size can
# overflow either; and far beyond any pool a machine can hold.
MAX_SIZE = Bytes(1 << 60)

# The smallest filesystem mkfs.xfs makes (xfsprogs 6.1, Debian 12: "Filesystem must be larger
# than 300MB"; 300 MiB is made). Config and spec files refuse smaller xfs devices up front.
XFS_MIN_SIZE = Bytes(300 << 20)

# More digits than any size up to MAX_SIZE needs, however spelt; refusing them early keeps
# Python's int() limit on digit strings (a ValueError of its own) out of reach.
_MAX_DIGITS = 40

# containerd reads sizes with docker's go-units RAMInBytes: every unit is binary, whether it is
# spelt "KiB", "KB", "kb" or "k". We follow it so a containerd config value means the same here.
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)\s*", re.IGNORECASE)
_MULTIPLIERS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


class SizeError(ValueError):
    """A size could not be read; the message says what was wrong with it."""


def brief_repr(value: object) -> str:
    """A value for an error message: its repr, cut short (a message is one line)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _bounded(size: int, value: object) -> Bytes:
    if size > MAX_SIZE:
        raise SizeError(f"size {brief_repr(value)} is larger than the maximum, 1EiB (2**60 bytes)")
    return Bytes(size)


def parse_size(value: object) -> Bytes:
    """Read a size given as a whole number of bytes or as text like "1GiB", "32KB", "32Tb".

    Refuses sizes above MAX_SIZE, so every size of a config or spec fits the store and the
    kernel."""
    if isinstance(value, bool):
        raise SizeError(f"expected a size like \"1GiB\" or a number of bytes, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise SizeError(f"size must not be negative, got {brief_repr(value)}")
        return _bounded(value, value)
    if not isinstance(value, str):
        raise SizeError(
            f"expected a size like \"1GiB\" or a number of bytes, got {brief_repr(value)}")
    if sum(char.isdigit() for char in value) > _MAX_DIGITS:
        raise SizeError(f"size {brief_repr(value)} has more digits than any size up to 1EiB needs")
    match = _SIZE_RE.fullmatch(value)
    if match is None or (match.group(3) and not match.group(2)):
        raise SizeError(
            f"cannot read size {brief_repr(value)}: use a number with an optional unit "
            "(B, KiB/KB/K, MiB/MB/M, GiB/GB/G, TiB/TB/T, PiB/PB/P; all binary)"
        )
    number, unit = match.group(1), match.group(2).lower()
    multiplier = _MULTIPLIERS[unit]
    if "." in number:
        whole, frac = number.split(".")
        # Exact rational arithmetic: float would turn "1.1GiB" into a value off by a few bytes.
        numerator = int(whole + frac) * multiplier
        denominator = 10 ** len(frac)
        if numerator % denominator:
            raise SizeError(f"size {brief_repr(value)} is not a whole number of bytes")
        return _bounded(numerator // denominator, value)
    return _bounded(int(number) * multiplier, value)


_DISPLAY_UNITS = (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20),
                  ("KiB", 1 << 10))


def format_size(size: int) -> str:
    """Render bytes with the largest binary unit: exact ("1GiB") or to one decimal ("1.5GiB")."""
    for unit, multiplier in _DISPLAY_UNITS:
        if size >= multiplier:
            if size % multiplier == 0:
                return f"{size // multiplier}{unit}"
            return f"{size / multiplier:.1f}{unit}"
    return f"{size}B"


def to_sectors(size: Bytes) -> Sectors:
    """Bytes to sectors; refuses a size that is not a whole number of sectors."""
    if size % SECTOR_SIZE:
        raise SizeError(f"{size} bytes is not a multiple of the {SECTOR_SIZE}-byte sector")
    return Sectors(size // SECTOR_SIZE)


_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or text with a unit: 0.5, "500ms", "30s", "5m", "1h".

    Refuses nan and infinities (a deadline of now + inf overflows, one of now + nan never
    comes), and numbers too large for a float."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SizeError(
            f"expected a duration like \"30s\" or a number of seconds, got {brief_repr(value)}")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            match = _DURATION_RE.fullmatch(value)
            if match is None:
                raise SizeError(
                    f"cannot read duration {brief_repr(value)}: use a number with ms, s, m or h")
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    except OverflowError:
        raise SizeError(f"duration {brief_repr(value)} is too large") from None
    if not math.isfinite(seconds):
        raise SizeError(f"duration must be a finite number of seconds, got {brief_repr(value)}")
    if seconds < 0:
        raise SizeError(f"duration must not be negative, got {brief_repr(value)}")
    return seconds
