"""`status --watch`'s loop (reconciler.status.watch): each change written once, SIGINT's
handler put back when the watch ends, Ctrl-C ending a watch whose look is inside a ctypes
callback (where a KeyboardInterrupt would be dropped), and SIGINT left ignored when it was."""

from __future__ import annotations

import io
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.status.watch import watch
from reconciler.testing.process import foreground

# How long a test waits for the child to do what it must (a bound on a hang, not a timing
# assertion: each comes in a fraction of a second).
WAIT_S = 30.0


class Done(Exception):
    """Ends an in-process watch (which otherwise ends only with the process)."""


def _looks(*documents: str) -> Callable[[], str | None]:
    """A render giving these documents one per look, then ending the watch."""
    left: Iterator[str] = iter(documents)

    def render() -> str | None:
        try:
            return next(left)
        except StopIteration:
            raise Done from None

    return render


def test_each_change_is_written_once_and_sigint_is_handled_as_before_afterwards() -> None:
    """NDJSON through a stream: a document equal to the last one is not written again; when
    the watch ends (here by its render's error), SIGINT's handler is the one from before."""
    before = signal.getsignal(signal.SIGINT)
    out = io.StringIO()
    with pytest.raises(Done):
        watch(_looks("a\n", "a\n", "b\n", "b\n", "a\n"), lambda: False, 0.001, table=False,
              exit_code=0, stream=out)
    assert out.getvalue() == "a\nb\na\n"
    assert signal.getsignal(signal.SIGINT) is before


def test_nothing_to_show_writes_nothing_and_returns() -> None:
    """A first look with nothing to show (a NAME without a device): nothing written, the
    watch returns, SIGINT's handler is the one from before."""
    before = signal.getsignal(signal.SIGINT)
    out = io.StringIO()
    watch(lambda: None, lambda: False, 1.0, table=True, exit_code=0, stream=out)
    assert out.getvalue() == ""
    assert signal.getsignal(signal.SIGINT) is before


# A watch whose second look calls into C, which calls back into Python and waits there, as
# a look calls libdevmapper and libdevmapper its log function (LOG_FUNCTION). It says on
# stderr when it is inside.
_CHILD = textwrap.dedent("""
    import ctypes, json, sys, time
    from reconciler import logs
    from reconciler.status.watch import watch

    logs.dump_stacks_on_quit()

    @ctypes.CFUNCTYPE(None)
    def inside_c():
        sys.stderr.write("in the callback\\n")
        sys.stderr.flush()
        time.sleep(3600)

    looks = 0
    def render():
        global looks
        looks += 1
        if looks > 1:
            inside_c()
        return json.dumps({"look": looks}) + "\\n"

    watch(render, lambda: False, 0.01, table=False, exit_code=7)
""")


def test_ctrl_c_ends_a_watch_inside_a_ctypes_callback() -> None:
    """SIGINT while the look is inside a C callback ends the process with the exit code
    given (ctypes would drop a KeyboardInterrupt raised there, and the watch go on), after
    the whole first document."""
    child = subprocess.Popen(foreground([sys.executable, "-c", _CHILD]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
    try:
        assert child.stderr is not None
        seen = b""
        while not seen.endswith(b"in the callback\n"):  # after whatever else it may say
            ready, _, _ = select.select([child.stderr], [], [], WAIT_S)
            assert ready, f"the child never called back into Python; it said: {seen!r}"
            line = child.stderr.readline()
            assert line, f"the child exited ({child.wait()}); it said: {seen!r}"
            seen += line
        child.send_signal(signal.SIGINT)
        try:
            out, err = child.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGQUIT)  # its threads' stacks on stderr, then it quits
            _, err = child.communicate(timeout=WAIT_S)
            pytest.fail(f"the watch had not ended {WAIT_S:g}s after SIGINT; its stderr and "
                        f"threads:\n{err.decode(errors='replace')}")
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == 7, err.decode()
    assert out == b'{"look": 1}\n'


def _sigint_disposition(pid: int) -> str:
    """How a running process takes SIGINT, from /proc: "ignored", "caught" or "default"."""
    masks = dict(line.split(":\t") for line in Path(f"/proc/{pid}/status").read_text()
                 .splitlines() if line.startswith(("SigIgn", "SigCgt")))
    bit = 1 << (signal.SIGINT - 1)
    if int(masks["SigIgn"], 16) & bit:
        return "ignored"
    return "caught" if int(masks["SigCgt"], 16) & bit else "default"


@pytest.mark.parametrize(("ignored", "disposition"), [
    ((), "caught"), ((signal.SIGINT,), "ignored")], ids=["foreground", "background"])
def test_a_watch_takes_sigint_unless_it_was_started_ignoring_it(
        ignored: tuple[int, ...], disposition: str) -> None:
    """While watching, SIGINT is caught (to end the watch); a watch started with SIGINT
    ignored (a shell's background job) leaves it ignored, as Python itself does."""
    program = ("from reconciler.status.watch import watch\n"
               "watch(lambda: '{}\\n', lambda: False, 0.05, table=False, exit_code=0)\n")
    child = subprocess.Popen(foreground([sys.executable, "-c", program], ignored),
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], WAIT_S)
        assert ready and child.stdout.readline() == b"{}\n"
        assert _sigint_disposition(child.pid) == disposition
    finally:
        child.kill()
        child.wait()
