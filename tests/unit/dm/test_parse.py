"""The strict parsers read every captured real output, and refuse what they do not know."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.dm import memo as memo_module
from reconciler.dm.errors import (
    DeviceBusy,
    DeviceExists,
    InvalidArgument,
    NoData,
    NoSuchDevice,
    ParseError,
    classify,
)
from reconciler.dm.host import Completed
from reconciler.dm.memo import LastCall, LastText
from reconciler.dm.parse import (
    NamedLine,
    listing_lines,
    named_targets,
    parse_info_columns,
    parse_info_fields,
    parse_info_line,
    parse_ls,
    parse_named_line,
    parse_named_lines,
    parse_pool_status,
    parse_pool_table,
    parse_single_lines,
    parse_target_line,
    parse_thin_status,
    parse_thin_table,
    single_thin_table,
    thin_table_hidden,
)
from reconciler.dm.types import DeviceInfo, PoolMode, TargetLine

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "dmsetup"


def steps() -> list[dict[str, Any]]:
    found = []
    for fixture in sorted(FIXTURES.glob("*.json")):
        found += [s for s in json.loads(fixture.read_text())["steps"]
                  if s["kind"] == "cmd" and s["argv"][0] == "dmsetup"]
    return found


def listings() -> list[tuple[str, str]]:
    """The captured all-devices listings: ("info", text) of `info -c` with its columns, and
    ("named", text) of `status` and `table`."""
    found = []
    for step in steps():
        words = step["argv"][1:]
        if step["rc"] != 0 or not step["stdout"]:
            continue
        if words[0] == "info" and "-c" in words and len(words) == 6:
            found.append(("info", step["stdout"]))
        elif words in (["status"], ["table"]):
            found.append(("named", step["stdout"]))
    return found


def test_every_captured_listing_parses() -> None:
    """ls, info -c, status and table outputs of the real kernel all parse."""
    parsed = 0
    for step in steps():
        if step["rc"] != 0 or not step["stdout"]:
            continue
        words = step["argv"][1:]
        if words[0] == "ls":
            parse_ls(step["stdout"])
        elif words[0] == "info" and "-c" in words:
            parse_info_columns(step["stdout"])
        elif words[0] in ("status", "table"):
            lines = (parse_named_lines(step["stdout"]).values() if len(words) == 1
                     else [parse_single_lines(step["stdout"])])
            for targets in lines:
                for target in targets:
                    parser = {
                        ("status", "thin"): parse_thin_status,
                        ("status", "thin-pool"): parse_pool_status,
                        ("table", "thin"): parse_thin_table,
                        ("table", "thin-pool"): parse_pool_table,
                    }[(words[0], target.target)]
                    parser(target)
        else:
            continue
        parsed += 1
    assert parsed >= 20


def test_pool_status_fields_are_typed() -> None:
    """A real pool status line becomes numbers, a mode and policies."""
    line = parse_target_line(
        "0 1048576 thin-pool 2 420/4096 17/8192 46 rw discard_passdown queue_if_no_space - 1024 "
    )
    status = parse_pool_status(line)
    assert (status.transaction_id, status.used_metadata_blocks, status.total_data_blocks) == (
        2, 420, 8192)
    assert status.held_metadata_root == 46
    assert status.mode == PoolMode.READ_WRITE
    assert not status.error_if_no_space
    assert status.metadata_low_watermark == 1024
    full = parse_pool_status(parse_target_line(
        "0 4096 thin-pool 0 419/4096 32/32 - out_of_data_space discard_passdown "
        "error_if_no_space - 1024 "))
    assert full.mode == PoolMode.OUT_OF_DATA_SPACE


def test_thin_status_gives_mapped_bytes() -> None:
    """mapped sectors x 512 is the device's usage; "-" means nothing mapped."""
    assert parse_thin_status(parse_target_line("0 2097152 thin 2176 22527")).used_bytes == \
        2176 * 512
    empty = parse_thin_status(parse_target_line("0 2097152 thin 0 -"))
    assert (empty.used_bytes, empty.highest_mapped_sector) == (0, None)


def test_a_failed_pool_hides_its_thin_tables_and_says_fail_or_error() -> None:
    """A pool in Fail mode: `dmsetup status` of it says "Fail" (or "Error" when its metadata
    cannot be read for the counts), and dm-thin shows its thin devices' tables, not only
    their statuses, as "Fail" (seen in the VM: tests/kernel/test_kernel_probes.py). The
    table is hidden, not malformed: no thin table, no error; anything else still is one."""
    for word, mode in (("Fail", PoolMode.FAIL), ("Error", PoolMode.ERROR)):
        status = parse_pool_status(parse_target_line(f"0 524288 thin-pool {word}"))
        assert (status.mode, status.needs_check) == (mode, True)
    hidden = parse_target_line("0 32768 thin Fail")
    assert thin_table_hidden(hidden) and single_thin_table([hidden]) is None
    assert parse_thin_status(hidden).failed
    shown = parse_target_line("0 32768 thin 253:3 1")
    assert not thin_table_hidden(shown) and single_thin_table([shown]) is not None
    with pytest.raises(ParseError, match="thin table"):
        parse_thin_table(parse_target_line("0 32768 thin Failed"))


def test_info_attr_flags_are_read() -> None:
    """L-sw is suspended, L--r read-only, LIsw has an inactive table."""
    text = ("DM_NAME='a':DM_UUID='':DM_MAJOR='254':DM_MINOR='1':DM_ATTR='LIsw':DM_OPEN='2':"
            "DM_SEGMENTS='1':DM_EVENTS='0'\n")
    (info,) = parse_info_columns(text)
    assert (info.live_table, info.inactive_table, info.suspended, info.readonly) == (
        True, True, True, False)
    assert info.open_count == 2


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("0 8 thin-pool 1 2/3 x/4 - rw discard_passdown queue_if_no_space - 1", "data"),
        ("0 8 thin-pool 1 2/3 3/4 - sleepy discard_passdown queue_if_no_space -", "mode"),
        ("0 8 thin-pool 1 2/3 3/4 - rw discard_passdown queue_if_no_space maybe", "needs_check"),
    ],
)
def test_unknown_words_are_errors_that_name_the_field(text: str, field: str) -> None:
    """A word the parser does not know raises ParseError naming the field and its meaning."""
    with pytest.raises(ParseError, match=f"field '{field}'"):
        parse_pool_status(parse_target_line(text))


@pytest.mark.parametrize(
    ("stderr", "expected", "temporary"),
    [
        ("device-mapper: message ioctl on rcpool  failed: File exists\n", DeviceExists, False),
        ("device-mapper: remove ioctl on a  failed: Device or resource busy\n", DeviceBusy,
         True),
        ("device-mapper: remove ioctl on x  failed: No such device or address\n", NoSuchDevice,
         False),
        ("Device does not exist.\nCommand failed.\n", NoSuchDevice, False),
        ("device-mapper: message ioctl on p  failed: No data available\n", NoData, False),
        ("device-mapper: message ioctl on p  failed: Invalid argument\n", InvalidArgument,
         False),
    ],
)
def test_errors_are_classified_from_the_kernels_words(
    stderr: str, expected: type[Exception], temporary: bool
) -> None:
    """Every captured error text maps to its errno class, which carries the retry decision."""
    error = classify("x", Completed(("dmsetup",), 1, "", stderr))
    assert type(error) is expected
    assert error.temporary is temporary


def test_every_captured_error_is_classified_as_its_errno() -> None:
    """No captured failure falls through to the catch-all class."""
    failures = [s for s in steps() if s["rc"] != 0]
    assert failures
    for step in failures:
        error = classify("x", Completed(tuple(step["argv"]), step["rc"], "", step["stderr"]))
        assert error.errno_name != "EIO", step


def test_remembered_lines_parse_as_fresh_ones() -> None:
    """Every captured all-devices listing parses to the same values through a LastCall as
    without one, however the calls follow each other."""
    info_memo: LastCall[str, DeviceInfo] = LastCall()
    line_memo: LastCall[str, NamedLine] = LastCall()
    compared = 0
    for kind, text in listings():
        for _ in range(2):
            if kind == "info":
                assert parse_info_columns(text, info_memo) == parse_info_columns(text)
            else:
                assert parse_named_lines(text, line_memo) == parse_named_lines(text)
            compared += 1
    assert compared == 12, "two info, two status and two table listings, twice each"


@pytest.mark.parametrize("line", [
    "DM_NAME='p-a':DM_UUID='RECONCILER-v1-p-1':DM_MAJOR='254':DM_MINOR='3':DM_ATTR='L--w':"
    "DM_OPEN='0':DM_SEGMENTS='1':DM_EVENTS='0'",
    "DM_NAME='it\\'s':DM_UUID='':DM_MAJOR='254':DM_MINOR='12':DM_ATTR='LIsrp':"
    "DM_OPEN='2':DM_SEGMENTS='1':DM_EVENTS='7'",
])
def test_the_one_match_info_parse_agrees_with_the_field_by_field_one(line: str) -> None:
    """parse_info_line (one regex over the whole line) gives what the field-by-field parse
    gives, for every captured info line and for escaped names and every flag."""
    captured = [line for step in steps() if step["argv"][1:2] == ["info"]
                and "-c" in step["argv"] and step["rc"] == 0
                for line in step["stdout"].splitlines() if line.startswith("DM_NAME=")]
    assert captured
    for each in [line, *captured]:
        assert parse_info_line(each) == parse_info_fields(each)


def test_last_call_keeps_what_the_last_call_asked_for_and_nothing_older() -> None:
    """An unchanged line is not parsed again (the same object comes back); a line no longer
    printed is forgotten after one call, so changing lines do not pile up."""
    made: list[str] = []

    def parse(line: str) -> NamedLine:
        made.append(line)
        return parse_named_line(line)

    memo: LastCall[str, NamedLine] = LastCall()
    first = [memo.get(line, parse) for line in ("a: 0 8 thin 1", "b: 0 8 thin 5 9")]
    memo.end_call()
    second = [memo.get(line, parse) for line in ("a: 0 8 thin 1", "b: 0 8 thin 6 9")]
    memo.end_call()
    assert made == ["a: 0 8 thin 1", "b: 0 8 thin 5 9", "b: 0 8 thin 6 9"]
    assert second[0] is first[0] and second[1] != first[1]
    assert len(memo) == 2, "b's old line is gone"
    with pytest.raises(ParseError):
        memo.get("no separator", parse)
    assert len(memo) == 2, "a line that does not parse is not kept"


def test_last_text_reuses_the_whole_result_and_each_unchanged_line() -> None:
    """The same text again gives the very same result, nothing parsed; a changed text parses
    only the lines the last one did not print, and gives every other line's value back as
    the same object; a text with no devices parses to nothing."""
    made: list[str] = []

    def parse(line: str) -> NamedLine:
        made.append(line)
        return parse_named_line(line)

    memo: LastText[NamedLine, dict[str, list[TargetLine]]] = LastText(
        listing_lines, parse, named_targets)
    first = memo.parse("a: 0 8 thin 1\nb: 0 8 thin 5 9\nc: \n")
    assert memo.parse("a: 0 8 thin 1\nb: 0 8 thin 5 9\nc: \n") is first
    second = memo.parse("a: 0 8 thin 1\nb: 0 8 thin 6 9\nc: \n")
    assert made == ["a: 0 8 thin 1", "b: 0 8 thin 5 9", "c: ", "b: 0 8 thin 6 9"]
    assert second == parse_named_lines("a: 0 8 thin 1\nb: 0 8 thin 6 9\nc: \n")
    assert second["a"][0] is first["a"][0] and second["b"] != first["b"]
    assert second["c"] == []
    assert memo.parse("No devices found\n") == {}
    third = memo.parse("a: 0 8 thin 1\n")
    assert made[-1] == "a: 0 8 thin 1", "a line two texts ago is parsed again"
    assert third == {"a": [parse_named_line("a: 0 8 thin 1")[1]]}
    with pytest.raises(ParseError):
        memo.parse("no separator\n")
    assert memo.parse("a: 0 8 thin 1\n") is third, "a text that does not parse is not kept"


def test_last_text_parses_captured_listings_as_fresh_ones() -> None:
    """Every captured all-devices listing parses through a LastText as without one, whatever
    listing came before it."""
    infos: LastText[DeviceInfo, list[DeviceInfo]] = LastText(
        listing_lines, parse_info_line, list)
    named: LastText[NamedLine, dict[str, list[TargetLine]]] = LastText(
        listing_lines, parse_named_line, named_targets)
    compared = 0
    for kind, text in listings():
        if kind == "info":
            assert infos.parse(text) == parse_info_columns(text)
        else:
            assert named.parse(text) == parse_named_lines(text)
        compared += 1
    assert compared == 6, "two info, two status and two table listings"


@pytest.mark.parametrize("chunk_chars", [1, 7, 64, 1 << 20])
def test_last_text_matches_a_changed_text_a_chunk_at_a_time(chunk_chars: int) -> None:
    """A changed text reuses the value of every line the last text also printed, whatever
    the chunks the last text is split in: line breaks of every kind, blank and repeated
    lines, and a "No devices found" line inside a text (which listing_lines drops from a
    text of that line alone, so that a chunk of it alone would lose a line)."""
    made: list[str] = []

    def make(line: str) -> tuple[str]:
        made.append(line)
        return (line,)  # a new object per parse: reuse shows as identity

    memo: LastText[tuple[str], list[tuple[str]]] = LastText(listing_lines, make, list)
    memo.chunk_chars = chunk_chars
    texts = [
        "a: 1\nb: 2\r\nc: 3\rd: 4\n\ne: 5\x1cf: 6\u2028g: 7\n",
        "a: 1\nb: 2\r\nx: 9\n\ne: 5\x1cf: 6\u2028g: 7\ng: 7\nh: 8\n",
        "No devices found\na: 1\nNo devices found\nh: 8\nb: 2\n",
        "a: 1\nh: 8\nNo devices found\nz: 0\n",
        "No devices found\n",
        "a: 1\n",
    ]
    last: dict[str, tuple[str]] = {}
    for text in texts:
        made.clear()
        values = memo.parse(text)
        assert values == [(line,) for line in listing_lines(text)]
        for line, value in zip(listing_lines(text), values, strict=True):
            if line in last and line not in made:
                assert value is last[line]
        # Only lines the last text did not print are parsed.
        assert set(made) <= set(listing_lines(text)) - set(last)
        last = dict(zip(listing_lines(text), values, strict=True))


@pytest.mark.parametrize("chunk_chars", [1, 7, 64, 1 << 20])
def test_a_first_text_parses_a_chunk_at_a_time(chunk_chars: int) -> None:
    """A LastText's first text is made line by line as a whole split would make it, every
    kind of line break and a "No devices found" line inside a text or alone included; and
    split a chunk at a time, never all its lines at once (a start-up's peak at 50,000
    devices), unless the chunks disagree with the whole (that lone line)."""
    texts = [
        "a: 1\nb: 2\r\nc: 3\rd: 4\n\ne: 5\x1cf: 6\u2028g: 7\n" * 5,
        "No devices found\na: 1\nNo devices found\nh: 8\nb: 2\n",
        "a: 1\nh: 8\nNo devices found\nz: 0\n" * 3,
        "No devices found\n",
        "",
    ]
    longest: list[int] = []

    def split(chunk: str) -> list[str]:
        lines = listing_lines(chunk)
        longest.append(len(lines))
        return lines

    for text in texts:
        longest.clear()
        memo: LastText[tuple[str], list[tuple[str]]] = LastText(
            split, lambda line: (line,), list)
        memo.chunk_chars = chunk_chars
        assert memo.parse(text) == [(line,) for line in listing_lines(text)]
        if chunk_chars < 64 and "No devices found" not in text and text:
            assert max(longest) < len(listing_lines(text)) // 2


@pytest.mark.parametrize("chunk_chars", [1, 7, 64, 1 << 20])
def test_a_changed_text_never_reuses_a_value_on_a_hash_alone(
        chunk_chars: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines of a changed text are matched by hash, then compared: with every line's hash
    the same, no line gets another line's value: a line is given the last text's value
    only where the two are equal (here the last "a: 1", whose place the hash names, and
    the first, its repeat), and every other line is parsed."""
    monkeypatch.setattr(memo_module, "hash", lambda line: 0, raising=False)
    memo: LastText[tuple[str], list[tuple[str]]] = LastText(
        listing_lines, lambda line: (line,), list)
    memo.chunk_chars = chunk_chars
    first = memo.parse("a: 1\nb: 2\nc: 3\n")
    again = memo.parse("c: 3\nx: 9\na: 1\na: 1\n")
    assert again == [("c: 3",), ("x: 9",), ("a: 1",), ("a: 1",)]
    assert again[2] is first[0] and again[3] is first[0]


def test_a_changed_text_is_split_a_chunk_at_a_time() -> None:
    """A changed text of many lines is matched and made without splitting either text
    into all its lines at once (the peak of a pass after a change, at 50,000 devices)."""
    longest: list[int] = []

    def split(chunk: str) -> list[str]:
        lines = listing_lines(chunk)
        longest.append(len(lines))
        return lines

    memo: LastText[tuple[str], list[tuple[str]]] = LastText(split, lambda line: (line,), list)
    memo.chunk_chars = 64
    last = "".join(f"d{i}: {i}\n" for i in range(200))
    memo.parse(last)
    longest.clear()
    changed = last.replace("d7: 7\n", "d7: 8\n") + "new: 1\n"
    assert memo.parse(changed) == [(line,) for line in listing_lines(changed)]
    assert max(longest) < 20
