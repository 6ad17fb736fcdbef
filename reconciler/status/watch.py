"""`status --watch`: the document written again whenever it changes, until Ctrl-C ends the
process at once, whatever it was doing.

Python turns SIGINT into KeyboardInterrupt only when the main thread next runs Python code,
and where that code is a ctypes callback (libdevmapper's log function, called several
times by each kernel read) ctypes prints the exception and drops it: the watch went on, and
issue 25's test waited 30 s for an exit that never came. Even when it is not dropped, it
waits for the C call in progress: a store read inside SQLite's busy wait, or closing the
last connection, which checkpoints the write-ahead log and syncs it to disk.

So the signal is taken in C and acted on by a thread of its own: `signal.set_wakeup_fd`
writes the signal's number to a pipe the moment it arrives, a thread reading that pipe
waits only for a document being written to be finished (so that a reader gets whole
documents, whole NDJSON lines), and ends the process. Nothing is closed on the way out, and
nothing needs to be: the watch only reads the store and the kernel.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType
from typing import NoReturn, TextIO

# Clear the screen and go home: only a terminal gets it.
CLEAR_SCREEN = "\033[H\033[2J"
# While watching, how often the store is asked whether another process wrote it (one cheap
# query), so that a change is shown at once rather than at the next look.
STORE_POLL_SECONDS = 0.2
# How long Ctrl-C lets a document being written finish: whole lines for a reader that reads,
# and no wait without end on one that stopped reading (a full pipe).
FINISH_WRITE_SECONDS = 1.0


class Output:
    """Whole documents onto a stream: a write and its flush are one, under a lock that
    Ctrl-C takes before it ends the process."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        """Write `text` and flush it, whole."""
        with self.lock:
            self.stream.write(text)
            self.stream.flush()


def _wake_only(signum: int, frame: FrameType | None) -> None:
    """SIGINT's Python handler while watching: nothing (the thread reading the wake-up pipe
    acts on it), and above all no KeyboardInterrupt, which a ctypes callback would drop."""


def _end_on_interrupt(read_end: int, output: Output, exit_code: int) -> None:
    """Wait for SIGINT on the wake-up pipe, then end the process once no document is being
    written. Returns when the pipe is closed (the watch ended otherwise)."""
    while chunk := os.read(read_end, 64):
        if signal.SIGINT in chunk:
            output.lock.acquire(timeout=FINISH_WRITE_SECONDS)
            os._exit(exit_code)


@contextmanager
def ended_by_interrupt(output: Output, exit_code: int) -> Iterator[None]:
    """Within the block, SIGINT ends the process with `exit_code` at once (see the module's
    docstring); afterwards SIGINT is handled as before. The main thread's only. A SIGINT
    ignored (a job started in the background by a shell) stays ignored."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    # The signal's C handler must never block on it; the thread's read waits.
    os.set_blocking(write_end, False)
    thread = threading.Thread(target=_end_on_interrupt, args=(read_end, output, exit_code),
                              name="interrupt", daemon=True)
    # The pipe and its reader first, the handler last (and back first): at no moment may a
    # SIGINT be taken by _wake_only with nobody told.
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    thread.start()
    previous_handler = signal.signal(signal.SIGINT, _wake_only)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_end)  # the thread reads the end of the pipe and returns
        thread.join()
        os.close(read_end)


def watch(render: Callable[[], str | None], store_changed: Callable[[], bool],
          interval: float, table: bool, exit_code: int, stream: TextIO | None = None) -> None:
    """Write the document, then again each time it changes (never the same one twice in a
    row): looked at every `interval` seconds, and at once when the store was written.
    A terminal's table is redrawn in place, under a line that says when it changed (UTC);
    anything else (a pipe, a file, NDJSON) gets the documents one after another, no escapes,
    so that a script reads them as they come. `table`: the documents are tables (else
    NDJSON lines); `stream`: sys.stdout unless given.

    Ctrl-C ends the process with `exit_code`, from the first look on. Returns only when the
    first look finds nothing to show (`render` gave None), having written nothing."""
    output = Output(sys.stdout if stream is None else stream)
    with ended_by_interrupt(output, exit_code):
        text = render()
        if text is not None:
            _keep_writing(output, text, render, store_changed, interval, table)


def _keep_writing(output: Output, first: str, render: Callable[[], str | None],
                  store_changed: Callable[[], bool], interval: float, table: bool) -> NoReturn:
    """The watch's loop, from its first document on: it ends only by an exception, or by
    Ctrl-C ending the process."""
    on_tty = table and output.stream.isatty()
    shown = None
    text: str | None = first
    store_changed()  # from here on, it says whether anything was written since
    while True:
        if text is not None and text != shown:
            if on_tty:
                stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                output.write(f"{CLEAR_SCREEN}changed at {stamp}, looking every "
                             f"{interval:g}s\n\n{text}")
            else:
                # A table (not NDJSON) is parted from the one before by an empty line.
                blank = "\n" if table and shown is not None else ""
                output.write(blank + text)
            shown = text
        deadline = time.monotonic() + interval
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(STORE_POLL_SECONDS, left))
            if store_changed():
                break
        text = render()
