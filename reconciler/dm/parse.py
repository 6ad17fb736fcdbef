"""Strict parsers for the text dmsetup prints. Every unexpected word is an error naming the field.

The formats are those of the captured outputs in fixtures/dmsetup/ (tests replay them), and of
the kernel's Documentation/admin-guide/device-mapper/thin-provisioning.rst for the status
fields.
"""

from __future__ import annotations

import re
import sys
from typing import TypeVar

from reconciler.dm.errors import ParseError
from reconciler.dm.memo import LastCall
from reconciler.dm.types import (
    DeviceInfo,
    DeviceListing,
    PoolMode,
    TargetLine,
    ThinPoolStatus,
    ThinPoolTable,
    ThinStatus,
    ThinTable,
)
from reconciler.units import Sectors
from reconciler.vocabulary import MAX_THIN_ID, ThinId

NO_DEVICES = "No devices found"
_LS_RE = re.compile(r"^(?P<name>\S.*?)\t+\((?P<major>\d+)(?::|, )(?P<minor>\d+)\)$")
_PREFIXED_RE = re.compile(r"(DM_[A-Z]+)='((?:[^'\\]|\\.)*)'")
_INFO_FIELDS = (
    "DM_NAME", "DM_UUID", "DM_MAJOR", "DM_MINOR", "DM_ATTR", "DM_OPEN", "DM_SEGMENTS",
    "DM_EVENTS",
)
T = TypeVar("T")


def _fail(field: str, meaning: str, value: object, source: str) -> ParseError:
    return ParseError(
        "parse", detail=f"field {field!r} ({meaning}): unexpected {value!r} in {source!r}"
    )


def _int(field: str, meaning: str, value: str, source: str) -> int:
    if not value.isdigit():
        raise _fail(field, meaning, value, source)
    return int(value)


def listing_lines(text: str) -> list[str]:
    """The lines of an all-devices listing (none when it says there are no devices)."""
    lines = text.splitlines()
    if lines == [NO_DEVICES]:
        return []
    return lines


def parse_ls(text: str) -> list[DeviceListing]:
    """`dmsetup ls`: one `name<TAB>(major:minor)` line per device."""
    devices = []
    for line in listing_lines(text):
        match = _LS_RE.match(line)
        if match is None:
            raise _fail("ls line", "name and device number", line, text)
        devices.append(
            DeviceListing(match["name"], int(match["major"]), int(match["minor"]))
        )
    return devices


_ESCAPED_RE = re.compile(r"\\(.)")


def _unescape(value: str) -> str:
    return _ESCAPED_RE.sub(r"\1", value) if "\\" in value else value


def parse_info_columns(text: str,
                       memo: LastCall[str, DeviceInfo] | None = None) -> list[DeviceInfo]:
    """`dmsetup info -c --noheadings --nameprefixes -o name,uuid,major,minor,attr,open,...`.

    With `memo`, a line the last call also printed is not parsed again."""
    if memo is None:
        return [parse_info_line(line) for line in listing_lines(text)]
    return memo.call(listing_lines(text), parse_info_line)


_VALUE = r"'((?:[^'\\]|\\.)*)'"
# The whole line as we ask for it, in one match: a start-up reads 10,000 of them. A line it
# does not match goes through the field-by-field parse, which names what is wrong.
_INFO_LINE_RE = re.compile(":".join(f"{key}={_VALUE}" for key in _INFO_FIELDS))
_ATTR_RE = re.compile(r"[L-][I-][s-][rw].*")


def parse_info_line(line: str) -> DeviceInfo:
    """One device's line of `dmsetup info -c --nameprefixes` (the columns above)."""
    match = _INFO_LINE_RE.fullmatch(line)
    if match is not None:
        name, uuid, major, minor, attr, opened, segments, events = match.groups()
        if major.isdigit() and minor.isdigit() and opened.isdigit() and segments.isdigit() \
                and events.isdigit() and _ATTR_RE.fullmatch(attr):
            return DeviceInfo(
                # Interned, as the store's records and specs are: one string per name.
                name=sys.intern(_unescape(name)), uuid=_unescape(uuid), major=int(major),
                minor=int(minor), live_table=attr[0] == "L", inactive_table=attr[1] == "I",
                suspended=attr[2] == "s", readonly=attr[3] == "r", open_count=int(opened),
                segments=int(segments), events=int(events))
    return parse_info_fields(line)


def parse_info_fields(line: str) -> DeviceInfo:
    """parse_info_line field by field: slower, and says which field is wrong."""
    pairs = _PREFIXED_RE.findall(line)
    keys = tuple(key for key, _ in pairs)
    if keys != _INFO_FIELDS:
        raise _fail("info columns", "DM_NAME..DM_EVENTS in order", line, line)
    values = {key: _unescape(value) for key, value in pairs}
    return _info(values, line)


def _info(values: dict[str, str], line: str) -> DeviceInfo:
    attr = values["DM_ATTR"]
    # attr: [L]ive table, [I]nactive table, [s]uspended, [r]ead-only or [w]ritable, then
    # optional flags (for example [p] for "private", [u] uevents...) we need not read.
    if len(attr) < 4 or attr[0] not in "L-" or attr[1] not in "I-" or attr[2] not in "s-" \
            or attr[3] not in "rw":
        raise _fail("DM_ATTR", "live/inactive/suspended/read-only flags", attr, line)
    return DeviceInfo(
        name=values["DM_NAME"],
        uuid=values["DM_UUID"],
        major=_int("DM_MAJOR", "device major number", values["DM_MAJOR"], line),
        minor=_int("DM_MINOR", "device minor number", values["DM_MINOR"], line),
        live_table=attr[0] == "L",
        inactive_table=attr[1] == "I",
        suspended=attr[2] == "s",
        readonly=attr[3] == "r",
        open_count=_int("DM_OPEN", "open count", values["DM_OPEN"], line),
        segments=_int("DM_SEGMENTS", "number of targets", values["DM_SEGMENTS"], line),
        events=_int("DM_EVENTS", "event counter", values["DM_EVENTS"], line),
    )


def parse_target_line(line: str) -> TargetLine:
    """`<start> <length> <target> <params...>` of one table or status line."""
    words = line.split(" ", 3)
    if len(words) < 3:
        raise _fail("target line", "start length target params", line, line)
    start = _int("start", "first sector", words[0], line)
    length = _int("length", "number of sectors", words[1], line)
    return TargetLine(Sectors(start), Sectors(length), words[2], words[3] if len(words) > 3 else "")


NamedLine = tuple[str, TargetLine | None]


def parse_named_lines(text: str, memo: LastCall[str, NamedLine] | None = None,
                      ) -> dict[str, list[TargetLine]]:
    """`dmsetup status` or `dmsetup table` of all devices: `name: <target line>` lines.

    With `memo`, a line the last call also printed is not parsed again."""
    lines = listing_lines(text)
    named = [parse_named_line(line) for line in lines] if memo is None \
        else memo.call(lines, parse_named_line)
    return named_targets(named)


def named_targets(named: list[NamedLine]) -> dict[str, list[TargetLine]]:
    """The targets of each device, by name, of a listing's lines parsed in order."""
    result: dict[str, list[TargetLine]] = {}
    for name, target in named:
        targets = result.setdefault(name, [])
        if target is not None:
            targets.append(target)
    return result


def parse_named_line(line: str) -> NamedLine:
    """`name: <target line>`; the target is None for a device with no live table, which
    prints `name: ` and nothing else."""
    name, sep, rest = line.partition(": ")
    if not sep or not name:
        raise _fail("device line", "name: target line", line, line)
    # Interned: the name, a listing's key for every device, is then the records' string.
    return sys.intern(name), parse_target_line(rest) if rest.strip() else None


def parse_single_lines(text: str) -> list[TargetLine]:
    """`dmsetup status NAME` or `dmsetup table NAME`: target lines without names."""
    return [parse_target_line(line) for line in text.splitlines() if line.strip()]


def _expect(target: TargetLine, wanted: str) -> None:
    if target.target != wanted:
        raise _fail("target", f"a {wanted} target", target.target, target.params)


def parse_thin_status(target: TargetLine) -> ThinStatus:
    """thin status: `<mapped sectors> <highest mapped sector or ->` or `Fail`."""
    _expect(target, "thin")
    words = target.params.split()
    if words == ["Fail"]:
        return ThinStatus(target.length, True, Sectors(0), None)
    if len(words) != 2:
        raise _fail("thin status", "mapped sectors and highest mapped sector", target.params,
                    target.params)
    mapped = _int("nr_mapped_sectors", "sectors mapped in the pool", words[0], target.params)
    highest = None if words[1] == "-" else Sectors(
        _int("highest_mapped_sector", "last mapped sector", words[1], target.params)
    )
    return ThinStatus(target.length, False, Sectors(mapped), highest)


def _ratio(field: str, meaning: str, value: str, source: str) -> tuple[int, int]:
    used, sep, total = value.partition("/")
    if not sep:
        raise _fail(field, meaning, value, source)
    return _int(field, meaning, used, source), _int(field, meaning, total, source)


def _choice(field: str, meaning: str, value: str, options: dict[str, T], source: str) -> T:
    if value not in options:
        raise _fail(field, meaning, value, source)
    return options[value]


def parse_pool_status(target: TargetLine) -> ThinPoolStatus:
    """thin-pool status (kernel thin-provisioning.rst, "Status" of the pool target)."""
    _expect(target, "thin-pool")
    src = target.params
    words = src.split()
    if words in (["Fail"], ["Error"]):
        return ThinPoolStatus(
            target.length, PoolMode(words[0]), 0, 0, 0, 0, 0, None, False, False, True, None
        )
    if len(words) not in (8, 9):
        raise _fail("thin-pool status", "8 or 9 fields", src, src)
    meta_used, meta_total = _ratio("metadata", "used/total metadata blocks", words[1], src)
    data_used, data_total = _ratio("data", "used/total data blocks", words[2], src)
    held: int | None = None
    if words[3] != "-":
        held = _int("held_metadata_root", "metadata snapshot root", words[3], src)
    mode = _choice("mode", "pool health", words[4],
                   {"rw": PoolMode.READ_WRITE, "ro": PoolMode.READ_ONLY,
                    "out_of_data_space": PoolMode.OUT_OF_DATA_SPACE}, src)
    discard = _choice("discard", "discard passdown", words[5],
                      {"discard_passdown": True, "no_discard_passdown": False}, src)
    error_if_no_space = _choice("no_space_policy", "what a write does when full", words[6],
                                {"error_if_no_space": True, "queue_if_no_space": False}, src)
    needs_check = _choice("needs_check", "metadata needs thin_check", words[7],
                          {"needs_check": True, "-": False}, src)
    watermark = None
    if len(words) == 9:
        watermark = _int("metadata_low_watermark", "metadata blocks threshold", words[8], src)
    return ThinPoolStatus(
        length=target.length,
        mode=mode,
        transaction_id=_int("transaction_id", "pool transaction id", words[0], src),
        used_metadata_blocks=meta_used,
        total_metadata_blocks=meta_total,
        used_data_blocks=data_used,
        total_data_blocks=data_total,
        held_metadata_root=held,
        discard_passdown=discard,
        error_if_no_space=error_if_no_space,
        needs_check=needs_check,
        metadata_low_watermark=watermark,
    )


def thin_table_hidden(target: TargetLine) -> bool:
    """Whether a thin device's table is hidden by its pool's Fail mode: dm-thin's thin_status
    then prints "Fail" alone for the table as for the status, so the device's pool and thin
    id cannot be read (they are not lost: the table is the kernel's still)."""
    return target.target == "thin" and target.params.split() == ["Fail"]


def parse_thin_table(target: TargetLine) -> ThinTable:
    """thin table: `<pool dev> <dev id>` (an external origin is not something we make)."""
    _expect(target, "thin")
    words = target.params.split()
    if len(words) != 2:
        raise _fail("thin table", "pool device and thin id", target.params, target.params)
    device_id = _int("dev_id", "thin id in the pool", words[1], target.params)
    if device_id > MAX_THIN_ID:
        raise _fail("dev_id", "thin id in the pool (24 bits)", words[1], target.params)
    return ThinTable(target.length, words[0], ThinId(device_id))


def single_thin_table(lines: list[TargetLine]) -> ThinTable | None:
    """The thin table of a device whose table is one thin target, else None (also when its
    pool's Fail mode hides it)."""
    if len(lines) == 1 and lines[0].target == "thin" and not thin_table_hidden(lines[0]):
        return parse_thin_table(lines[0])
    return None


def parse_pool_table(target: TargetLine) -> ThinPoolTable:
    """thin-pool table: `<meta dev> <data dev> <block sectors> <low water> [<n> <feature>...]`."""
    _expect(target, "thin-pool")
    src = target.params
    words = src.split()
    if len(words) < 4:
        raise _fail("thin-pool table", "metadata, data, block size, low water mark", src, src)
    features: tuple[str, ...] = ()
    if len(words) > 4:
        count = _int("feature count", "number of feature arguments", words[4], src)
        features = tuple(words[5:])
        if len(features) != count:
            raise _fail("features", f"{count} feature arguments", " ".join(features), src)
    return ThinPoolTable(
        length=target.length,
        metadata_device=words[0],
        data_device=words[1],
        data_block_sectors=_int("data_block_size", "sectors per data block", words[2], src),
        low_water_mark=_int("low_water_mark", "free blocks threshold", words[3], src),
        features=features,
    )
