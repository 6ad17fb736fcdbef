"""`reconciler status` for scripts and people: every flag table-driven (-o, --no-headers,
--json, --watch), the thin id under one name, times with their zone, pool percentages, a
snapshot origin shown as the active device it is, and `--watch` as NDJSON through a pipe
and as a redrawn table only on a terminal."""

from __future__ import annotations

import itertools
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from reconciler.arguments import build_parser
from reconciler.cli import main
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.process import foreground

TABLE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ESCAPE = "\x1b"
# How long a test waits for a line the watcher must write (a bound on a hang, not a timing
# assertion: the line comes in a fraction of a second).
LINE_WAIT_S = 30.0


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config over a small loopback pool."""
    path = write_config(tmp_path / "config.toml", root_path=tmp_path / "state",
                        spec_dir=tmp_path / "specs", pool_name="stpool",
                        loopback_data_size="256MiB", loopback_metadata_size="8MiB",
                        base_image_size="32MiB")
    (tmp_path / "specs").mkdir()
    return path


@pytest.fixture
def host(config: Path) -> FakeKernel:
    """A fake kernel after one pass over an origin and its snapshot."""
    specs = config.parent / "specs"
    (specs / "base.toml").write_text('size = "64MiB"\nfilesystem = "none"\n')
    (specs / "snap.toml").write_text('parent = "base"\n')
    kernel = FakeKernel()
    assert main(["-c", str(config), "run", "--once"], host=kernel) == 0
    return kernel


def _run(config: Path, host: FakeKernel, capsys: pytest.CaptureFixture[str],
         *argv: str) -> tuple[int, list[str], list[str]]:
    capsys.readouterr()
    code = main(["-c", str(config), "status", *argv], host=host)
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


@pytest.mark.parametrize(("argv", "lines"), [
    (["-o", "name,thin_id", "--no-headers"], [["base", "0"], ["snap", "1"]]),
    (["--output", "STATE,Name", "--no-headers"], [["Activated", "base"], ["Activated", "snap"]]),
    (["-o", "name,parent"], [["NAME", "PARENT"], ["base", "-"], ["snap", "base"]]),
    (["-o", "thin_id"], [["THIN_ID"], ["0"], ["1"]]),
    (["--no-headers", "-o", "name,size,kind"], [["base", "64MiB", "spec"],
                                                ["snap", "64MiB", "spec"]]),
    (["snap", "--no-headers", "-o", "name,state"], [["snap", "Activated"]]),
])
def test_columns_and_headers_are_chosen(config: Path, host: FakeKernel, argv: list[str],
                                        lines: list[list[str]],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """-o picks the columns in its order (any case); --no-headers leaves only the device
    rows (no pool line, header, sections or history), for `while read` loops."""
    code, out, err = _run(config, host, capsys, *argv)
    assert (code, err) == (0, [])
    table = out if "--no-headers" in argv else out[1:]  # the pool line comes first
    assert [line.split() for line in table] == lines


@pytest.mark.parametrize(("argv", "message"), [
    (["-o", "name,bogus"], "reconciler: status -o: unknown column bogus; choose from "
     "name,kind,state,since,thin_id,size,used,parent,key,error"),
    (["-o", ","], "reconciler: status -o: no column named; choose from "
     "name,kind,state,since,thin_id,size,used,parent,key,error"),
    (["--json", "-o", "name"], "reconciler: status -o and --no-headers shape the table, "
     "not --json"),
    (["--json", "--no-headers"], "reconciler: status -o and --no-headers shape the table, "
     "not --json"),
    (["--watch", "0"], "reconciler: status --watch: SECONDS must be more than 0"),
    (["--check", "--watch"], "reconciler: status --check takes no NAME and no --watch"),
])
def test_flags_that_do_not_go_together_exit_two(config: Path, host: FakeKernel,
                                                argv: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A usage error is exit 2 and one line that says what is wrong."""
    assert _run(config, host, capsys, *argv) == (2, [], [message])


def _json(config: Path, host: FakeKernel, capsys: pytest.CaptureFixture[str],
          *argv: str) -> dict[str, Any]:
    code, out, _ = _run(config, host, capsys, "--json", *argv)
    assert code == 0
    report: dict[str, Any] = json.loads("\n".join(out))
    return report


def test_the_thin_id_has_one_name(config: Path, host: FakeKernel,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """JSON says thin_id (device_id stays beside it, deprecated, the same value), the
    kernel's view says thin_id, the table says THIN_ID."""
    report = _json(config, host, capsys)
    for device in report["devices"]:
        assert device["thin_id"] == device["device_id"] == device["kernel"]["thin_id"]
    assert [d["thin_id"] for d in report["devices"]] == [0, 1]
    _, out, _ = _run(config, host, capsys)
    assert "THIN_ID" in out[1].split() and "ID" not in out[1].split()


@pytest.mark.parametrize(("argv", "thin_id", "code"), [
    (["adopt", "x", "--thin-id", "7"], 7, None),
    (["adopt", "x", "--id", "7"], 7, None),  # the old spelling, hidden and deprecated
    (["adopt", "x"], None, 2),
])
def test_adopt_takes_the_thin_id_under_its_name(config: Path, argv: list[str],
                                                thin_id: int | None, code: int | None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """adopt --thin-id; --id still parses but is not in the help; neither: exit 2."""
    assert build_parser().parse_args(argv).thin_id == thin_id
    if code is not None:
        assert main(["-c", str(config), *argv], host=FakeKernel()) == code
        assert capsys.readouterr().err == "reconciler: adopt needs --thin-id\n"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["adopt", "--help"])
    help_text = capsys.readouterr().out
    assert "--thin-id THIN_ID" in help_text and "--id" not in help_text.replace("--thin-id", "")


def test_times_say_their_zone(config: Path, host: FakeKernel,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """SINCE and the history are UTC with a Z; JSON's times carry +00:00."""
    _, out, _ = _run(config, host, capsys)
    since = out[1].split().index("SINCE")
    assert all(TABLE_TIME.match(line.split()[since]) for line in out[2:4])
    _, out, _ = _run(config, host, capsys, "base")
    history = out[out.index("history:") + 1:]
    assert history and all(re.match(r"^  \S+\.\d{3}Z  ", line) for line in history)
    report = _json(config, host, capsys)
    assert all(d["state_changed_at"].endswith("+00:00") for d in report["devices"])


def test_pool_use_is_shown_in_percent(config: Path, host: FakeKernel,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """data_used_percent and metadata_used_percent (one decimal) in JSON and the pool
    line."""
    pool = _json(config, host, capsys)["pool"]
    for part in ("data", "metadata"):
        used, total = pool[f"{part}_used_bytes"], pool[f"{part}_total_bytes"]
        assert pool[f"{part}_used_percent"] == round(100 * used / total, 1)
    assert pool["metadata_used_percent"] > 0
    _, out, _ = _run(config, host, capsys)
    assert f"({pool['metadata_used_percent']:g}%)" in out[0].split("metadata")[1]
    assert f"({pool['data_used_percent']:g}%)" in out[0].split("metadata")[0]


def test_a_healthy_snapshot_origin_reads_activated(config: Path, host: FakeKernel,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An origin rests in Resumed after its snapshot was taken: JSON keeps the machine's
    state, the table says Activated like any active device."""
    report = _json(config, host, capsys)
    assert {d["name"]: d["state"] for d in report["devices"]} == {
        "base": "Resumed", "snap": "Activated"}
    _, out, _ = _run(config, host, capsys, "-o", "name,state", "--no-headers")
    assert out == ["base  Activated", "snap  Activated"]


# -- --watch, as another process sees it ---------------------------------------------------


def _watcher(config: Path, *argv: str, stdout: int | IO[bytes] = subprocess.PIPE
             ) -> subprocess.Popen[bytes]:
    """`reconciler status --watch` in a process of its own (the host's device-mapper, if
    any, has no such pool: the pool part of the document says so, the same each time)."""
    return subprocess.Popen(
        foreground([sys.executable, "-m", "reconciler.cli", "-c", str(config), "status",
                    *argv]),
        # Unbuffered: select() must see each line as it comes, none kept in a buffer here.
        stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, bufsize=0)


def _stacks(process: subprocess.Popen[bytes]) -> str:
    """Where the watcher's threads are (the CLI dumps them to stderr on SIGQUIT, then quits),
    with everything else it wrote to stderr: what a test that waited in vain says."""
    process.send_signal(signal.SIGQUIT)
    try:
        _, err = process.communicate(timeout=LINE_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err.decode(errors="replace")


def _read_line(process: subprocess.Popen[bytes]) -> bytes:
    """The watcher's next line; the test fails with what it said (and, while it runs,
    where its threads are) when none comes in LINE_WAIT_S, or it exited instead."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], LINE_WAIT_S)
    if not ready:
        pytest.fail(f"the watcher wrote nothing in {LINE_WAIT_S:g}s; its stderr and "
                    f"threads:\n{_stacks(process)}")
    line = process.stdout.readline()
    if not line:
        _, err = process.communicate(timeout=LINE_WAIT_S)
        pytest.fail(f"the watcher exited ({process.returncode}) instead of writing; its "
                    f"stderr:\n{err.decode(errors='replace')}")
    return line


def _interrupt(process: subprocess.Popen[bytes]) -> bytes:
    """Ctrl-C (SIGINT to the watcher alone), and what it wrote to stdout until it exited
    (nothing when stdout is not a pipe of ours); if it has not exited LINE_WAIT_S later, the
    test fails with where it was."""
    process.send_signal(signal.SIGINT)
    try:
        rest, _ = process.communicate(timeout=LINE_WAIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the watcher had not exited {LINE_WAIT_S:g}s after SIGINT; its stderr "
                    f"and threads:\n{_stacks(process)}")
    return rest or b""


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Watchers started by a test, interrupted (Ctrl-C) and reaped after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_watch_json_is_ndjson_written_when_the_document_changes(
        config: Path, host: FakeKernel, stopped: list[subprocess.Popen[bytes]]) -> None:
    """Through a pipe, `status --json --watch` writes one JSON document per line, no
    escapes; a new one when the store changes (a pass adds a device), never the same twice
    in a row; Ctrl-C ends it with exit 0 after whole lines."""
    process = _watcher(config, "--json", "--watch", "0.1")
    stopped.append(process)
    first = _read_line(process)
    assert ESCAPE.encode() not in first and first.endswith(b"\n")
    assert [d["name"] for d in json.loads(first)["devices"]] == ["base", "snap"]
    (config.parent / "specs" / "more.toml").write_text('filesystem = "none"\n')
    assert main(["-c", str(config), "run", "--once"], host=host) == 0
    lines = [first]
    while "more" not in [d["name"] for d in json.loads(lines[-1])["devices"]] \
            or json.loads(lines[-1])["devices"][-1]["state"] != "Activated":
        lines.append(_read_line(process))
    rest = _interrupt(process)
    assert process.returncode == 0
    lines += rest.splitlines(keepends=True)
    documents = [json.loads(line) for line in lines]  # every line one whole document
    assert all(ESCAPE.encode() not in line and line.count(b"\n") == 1 for line in lines)
    assert all(a != b for a, b in itertools.pairwise(documents))


def test_watch_table_through_a_pipe_has_no_escapes(
        config: Path, host: FakeKernel, stopped: list[subprocess.Popen[bytes]]) -> None:
    """The table watched through a pipe: plain text, the pool line first, no escapes; Ctrl-C
    ends it with exit 0."""
    process = _watcher(config, "--watch", "0.1")
    stopped.append(process)
    first = _read_line(process).decode()
    assert first.startswith("pool stpool") and ESCAPE not in first
    assert _read_line(process).decode().split()[0] == "NAME"
    _interrupt(process)
    assert process.returncode == 0


def test_watch_table_on_a_terminal_is_redrawn_in_place(
        config: Path, host: FakeKernel, stopped: list[subprocess.Popen[bytes]]) -> None:
    """On a terminal (a pty) the watched table clears the screen and says when it changed,
    in UTC; Ctrl-C ends it with exit 0."""
    leader, follower = pty.openpty()
    try:
        process = _watcher(config, "--watch", "0.1", stdout=follower)
        stopped.append(process)
        seen = b""
        while b"NAME" not in seen:
            ready, _, _ = select.select([leader], [], [], LINE_WAIT_S)
            if not ready:
                pytest.fail(f"nothing on the terminal in {LINE_WAIT_S:g}s; the watcher's "
                            f"stderr and threads:\n{_stacks(process)}")
            seen += os.read(leader, 4096)
        _interrupt(process)
    finally:
        os.close(follower)
        os.close(leader)
    text = seen.decode()
    assert text.startswith("\x1b[H\x1b[2Jchanged at ")
    assert re.match(r"changed at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, looking every 0.1s",
                    text.removeprefix("\x1b[H\x1b[2J"))
    assert process.returncode == 0
