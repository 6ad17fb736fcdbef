"""Log lines on stderr: sd-daemon priority prefixes when stderr is the journal, and only then;
SIGQUIT's stack dump."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import structlog

from reconciler import logs

log = structlog.get_logger(__name__)


@pytest.fixture
def pipe() -> Iterator[tuple[int, IO[str]]]:
    """A pipe: its read end, and its write end as a text stream; structlog's configuration
    is put back afterwards."""
    saved: dict[str, Any] = structlog.get_config()
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    try:
        yield read_end, stream
    finally:
        stream.close()
        os.close(read_end)
        structlog.configure(**saved)


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


def _no_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def test_sigquit_writes_every_threads_stack_then_quits(tmp_path: Path) -> None:
    """After dump_stacks_on_quit, SIGQUIT writes each thread's stack to stderr (where the
    main thread and another one wait) and the process then dies of SIGQUIT, as before."""
    child = subprocess.Popen([sys.executable, "-c", _QUITTING_CHILD], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=_no_core)
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
