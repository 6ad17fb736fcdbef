"""Log lines on stderr: sd-daemon priority prefixes when stderr is the journal, and only then;
standard logging's records (the libraries') rendered as ours are; SIGQUIT's stack dump."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import structlog

from reconciler import logs
from reconciler.testing.process import foreground
from reconciler.testing.world import World

log = structlog.get_logger(__name__)


@pytest.fixture
def pipe() -> Iterator[tuple[int, IO[str]]]:
    """A pipe: its read end, and its write end as a text stream; structlog's configuration
    and standard logging's (the root logger's handlers and level, the narrators' levels,
    warnings) are put back afterwards."""
    saved: dict[str, Any] = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    narrators = {name: logging.getLogger(name).level for name in logs.NARRATORS}
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    try:
        yield read_end, stream
    finally:
        stream.close()
        os.close(read_end)
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, narrator_level in narrators.items():
            logging.getLogger(name).setLevel(narrator_level)
        logging.captureWarnings(False)


def as_stderr(stream: IO[str], monkeypatch: pytest.MonkeyPatch) -> os.stat_result:
    """Make `stream` sys.stderr (in the test's body: pytest's capture resets it between
    phases); its stat."""
    monkeypatch.setattr(sys, "stderr", stream)
    return os.fstat(stream.fileno())


def _emit_each_level() -> None:
    """One event per level, and an exception."""
    log.debug("probe.debug")
    log.info("probe.info")
    log.warning("probe.warning")
    log.error("probe.error")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("probe.exception")


def _read(read_end: int) -> list[str]:
    """The lines written to the pipe so far."""
    sys.stderr.flush()
    os.set_blocking(read_end, False)
    chunks = []
    try:
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode().splitlines()


def test_on_the_journal_each_line_carries_its_level_priority(
        pipe: tuple[int, IO[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """JOURNAL_STREAM equal to stderr's device and inode: <7> debug, <6> info, <4> warning,
    <3> error and exception (every line of a multi-line event)."""
    read_end, stream = pipe
    st = as_stderr(stream, monkeypatch)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    logs.configure("debug", json=True)
    _emit_each_level()
    logs.configure("debug", json=False)  # console lines: a traceback spans several lines
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("probe.console")
    lines = _read(read_end)
    prefixes = [line[:3] for line in lines]
    assert prefixes[:5] == ["<7>", "<6>", "<4>", "<3>", "<3>"]
    assert [line.split('"event": "')[1].split('"')[0] for line in lines[:5]] == [
        "probe.debug", "probe.info", "probe.warning", "probe.error", "probe.exception"]
    assert len(lines) > 6 and "Traceback" in "".join(lines[5:])
    assert all(line.startswith("<3>") for line in lines[5:])


@pytest.mark.parametrize("value", ["", "1:2", "garbage", "{dev}:{other}"],
                         ids=["unset", "another file", "garbage", "another inode"])
def test_elsewhere_lines_are_unchanged(pipe: tuple[int, IO[str]],
                                       monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """JOURNAL_STREAM unset, malformed, or naming another file (inherited by a process
    whose stderr was redirected): no prefix."""
    read_end, stream = pipe
    st = as_stderr(stream, monkeypatch)
    if value:
        monkeypatch.setenv("JOURNAL_STREAM", value.format(dev=st.st_dev, other=st.st_ino + 1))
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logs.configure("debug", json=True)
    log.warning("probe.warning")
    lines = _read(read_end)
    assert len(lines) == 1 and lines[0].startswith('{"event": "probe.warning"')


# TimeStamper's ISO form in UTC: what every line carries, ours and the libraries'.
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "console"])
def test_a_library_line_has_its_level_and_timestamp(pipe: tuple[int, IO[str]],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    as_json: bool) -> None:
    """A library's INFO record through standard logging (peewee's logger, %-style arguments)
    comes out as our own lines do: its message, its logger's name, its level and a UTC
    timestamp, in JSON or on the console; not dropped, and not Python's bare format."""
    read_end, stream = pipe
    as_stderr(stream, monkeypatch)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logs.configure("info", json=as_json)
    logging.getLogger("peewee").info("query %s", "SELECT 1")
    log.info("probe.ours")
    theirs, ours = _read(read_end)
    if as_json:
        line = json.loads(theirs)
        assert {k: line[k] for k in ("event", "logger", "level")} == {
            "event": "query SELECT 1", "logger": "peewee", "level": "info"}
        assert re.fullmatch(TIMESTAMP, line["timestamp"])
        assert {"level", "timestamp"} <= json.loads(ours).keys()
    else:
        assert re.fullmatch(TIMESTAMP + r" \[info\s*\] query SELECT 1\s+\[peewee\]", theirs)
        assert re.fullmatch(TIMESTAMP + r" \[info\s*\] probe\.ours\s*", ours)


def test_library_lines_follow_the_level_and_the_journal_priorities(
        pipe: tuple[int, IO[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """At warning, a library's info is left out and its warning, error (with its traceback,
    as a string in JSON) and a warnings.warn() come out, each with the journal's priority of
    its level when stderr is the journal."""
    read_end, stream = pipe
    st = as_stderr(stream, monkeypatch)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    logs.configure("warning", json=True)
    logging.getLogger("grpc").info("left out")
    logging.getLogger("watchdog.observers").warning("inotify watch limit reached")
    try:
        raise OSError("boom")
    except OSError:
        logging.getLogger("grpc._server").exception("Exception calling application")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("an old call", DeprecationWarning, stacklevel=1)
    lines = _read(read_end)
    assert [line[:3] for line in lines] == ["<4>", "<3>", "<4>"]
    documents = [json.loads(line[3:]) for line in lines]
    assert [(d["logger"], d["level"]) for d in documents] == [
        ("watchdog.observers", "warning"), ("grpc._server", "error"), ("py.warnings", "warning")]
    assert "OSError: boom" in documents[1]["exception"]
    assert "DeprecationWarning: an old call" in documents[2]["event"]
    assert all(re.fullmatch(TIMESTAMP, d["timestamp"]) for d in documents)


def test_configured_again_a_library_line_is_written_once(
        pipe: tuple[int, IO[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """configure() a second time (a reload) replaces its handler: one line per record, at the
    new level (debug now shows)."""
    read_end, stream = pipe
    as_stderr(stream, monkeypatch)
    logs.configure("info", json=True)
    logs.configure("debug", json=True)
    logging.getLogger("peewee").debug("query")
    lines = _read(read_end)
    assert len(lines) == 1 and json.loads(lines[0])["level"] == "debug"


_QUITTING_CHILD = """
import sys, threading, time
from reconciler import logs

def waiting_here():
    threading.Event().wait()

def main_sleeps():
    threading.Thread(target=waiting_here, daemon=True).start()
    print("ready", flush=True)
    time.sleep(60)

logs.dump_stacks_on_quit()
main_sleeps()
"""


def test_sigquit_writes_every_threads_stack_then_quits(tmp_path: Path) -> None:
    """After dump_stacks_on_quit, SIGQUIT writes each thread's stack to stderr (where the
    main thread and another one wait) and the process then dies of SIGQUIT, as before."""
    # SIGQUIT at its default, and no core file (in tmp_path, were the limit to allow one).
    child = subprocess.Popen(foreground([sys.executable, "-c", _QUITTING_CHILD]),
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        child.send_signal(signal.SIGQUIT)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGQUIT
    stacks = err.decode()
    assert "in waiting_here" in stacks and "in main_sleeps" in stacks


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
def test_a_narrating_librarys_info_shows_at_debug_only(
        pipe: tuple[int, IO[str]], monkeypatch: pytest.MonkeyPatch, level: str,
        shown: bool) -> None:
    """transitions' INFO lines (three per state change, which device.state_changed says
    once) are left out at info and written at debug; its warnings always."""
    read_end, stream = pipe
    as_stderr(stream, monkeypatch)
    logs.configure(level, json=True)
    logging.getLogger("transitions.core").info("Finished processing state Created")
    logging.getLogger("transitions.core").warning("a warning of its own")
    events = [json.loads(line)["event"] for line in _read(read_end)]
    assert events == (["Finished processing state Created"] if shown else []) + [
        "a warning of its own"]


@pytest.mark.parametrize(("level", "transitions"), [("info", 0), ("debug", 4)])
def test_a_created_device_is_one_line_at_info_and_each_transition_at_debug(
        pipe: tuple[int, IO[str]], monkeypatch: pytest.MonkeyPatch, fake_world: World,
        level: str, transitions: int) -> None:
    """The configured level decides what a pass writes of a new device: at info its one
    device.changed line, at debug each device.state_changed as well."""
    read_end, stream = pipe
    as_stderr(stream, monkeypatch)
    logs.configure(level, json=True)
    fake_world.spec("a", 'filesystem = "none"\n')
    assert fake_world.run_pass().ok
    events = [json.loads(line) for line in _read(read_end)]
    mine = [e for e in events if e.get("name") == "a"]
    assert [e["event"] for e in mine].count("device.state_changed") == transitions
    changed = [e for e in mine if e["event"] == "device.changed"]
    assert [(e["level"], e["from"], e["to"]) for e in changed] == [
        ("info", "Unknown", "Activated")]
