"""structlog configuration: the one place it is configured (everything else only logs).

JSON lines when stderr is not a terminal (journald, files, tests), readable console lines on a
terminal. Events are named `noun.verb` (device.state_changed) and say what happens next.
When stderr is the journal (systemd's JOURNAL_STREAM names its device and inode), each line
starts with sd-daemon's `<N>` priority prefix for its level, so that `journalctl -p warning`
and the colours of `journalctl` follow the event's level.
SIGQUIT (Ctrl-\\) writes every thread's stack to stderr before the process quits as it
always did: where a hung command was waiting, without a debugger.
"""

from __future__ import annotations

import faulthandler
import io
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict

LEVELS = ("debug", "info", "warning", "error")
# Libraries whose INFO lines narrate what one of our events says (transitions: three lines
# per state change, beside our device.state_changed): below warning they show at debug only.
NARRATORS = ("transitions",)


# sd-daemon.h's priority prefixes: SD_CRIT, SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG.
SD_CRIT, SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG = 2, 3, 4, 6, 7


def stderr_is_journal(environ: Mapping[str, str], stream: TextIO) -> bool:
    """Whether `stream` is the journal's: JOURNAL_STREAM holds `<dev>:<inode>` of the very
    file it is (systemd sets it for the service's stderr; a child whose stderr was
    redirected inherits the variable but not the file)."""
    dev, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False  # no file behind it (a test's capture)
    return (st.st_dev, st.st_ino) == (int(dev), int(inode))


class _StderrLogger:
    """Writes each rendered line to whatever sys.stderr is at that moment (tests swap it),
    with its priority prefix when stderr is the journal."""

    def __init__(self, journal: bool) -> None:
        self.journal = journal

    def _write(self, priority: int, message: str) -> None:
        if self.journal:
            # Every line: the journal reads a multi-line event (a traceback) line by line.
            message = "\n".join(f"<{priority}>{line}" for line in message.split("\n"))
        print(message, file=sys.stderr, flush=True)

    # The methods structlog calls, by the event's level (`exception` arrives as `error`).
    def critical(self, message: str) -> None:
        self._write(SD_CRIT, message)

    def error(self, message: str) -> None:
        self._write(SD_ERR, message)

    def warning(self, message: str) -> None:
        self._write(SD_WARNING, message)

    def info(self, message: str) -> None:
        self._write(SD_INFO, message)

    def debug(self, message: str) -> None:
        self._write(SD_DEBUG, message)

    exception = error
    msg = info


def dump_stacks_on_quit() -> None:
    """SIGQUIT writes every thread's Python stack to stderr, then takes its default action
    (the process quits, with a core dump where they are enabled)."""
    stderr = sys.__stderr__
    try:
        fileno = stderr.fileno() if stderr is not None else -1
    except (OSError, ValueError, io.UnsupportedOperation):
        fileno = -1
    if fileno >= 0:
        faulthandler.register(signal.SIGQUIT, file=fileno, all_threads=True, chain=True)


class _StandardHandler(logging.Handler):
    """Standard logging's records (the libraries': grpc, peewee, watchdog, Python's warnings)
    rendered by structlog as our own events are, and written where ours go."""

    def __init__(self, writer: _StderrLogger, formatter: logging.Formatter) -> None:
        super().__init__()
        self.writer = writer
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # The journal's priority from the record's level, as structlog's methods give it.
            self.writer._write(_priority(record.levelno), self.format(record))
        except Exception:  # noqa: BLE001 - logging's rule: reported by handleError, not raised
            self.handleError(record)


def _one_line_event(logger: Any, name: str, event: EventDict) -> EventDict:
    """A standard record's message without the newline some end with (a warning's)."""
    event["event"] = str(event["event"]).rstrip("\n")
    return event


def _priority(levelno: int) -> int:
    """sd-daemon's priority for a standard logging level (custom levels fall between)."""
    for floor, priority in ((logging.CRITICAL, SD_CRIT), (logging.ERROR, SD_ERR),
                            (logging.WARNING, SD_WARNING), (logging.INFO, SD_INFO)):
        if levelno >= floor:
            return priority
    return SD_DEBUG


def configure(level: str = "info", json: bool | None = None) -> None:
    """Set up structlog, and standard logging through it, for the process: every line at
    `level` or above, with its level and a UTC timestamp; `json` defaults to "stderr is
    not a TTY"."""
    use_json = not sys.stderr.isatty() if json is None else json
    writer = _StderrLogger(stderr_is_journal(os.environ, sys.stderr))
    # JSON carries an exception's traceback as a string ("exception"); the console renderer
    # prints it itself, and would only warn about a string made before it.
    renderer: list[structlog.typing.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(sort_keys=False)]
        if use_json
        else [structlog.dev.ConsoleRenderer(colors=False)]
    )
    stamped: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *stamped, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *args: writer,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, _one_line_event,
                           structlog.stdlib.add_logger_name, *stamped],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StandardHandler)]:
        root.removeHandler(handler)  # configured again (a reload, a test): one handler
    root.addHandler(_StandardHandler(writer, formatter))
    root.setLevel(threshold)
    for name in NARRATORS:
        logging.getLogger(name).setLevel(logging.DEBUG if threshold <= logging.DEBUG
                                         else max(threshold, logging.WARNING))
    # A library's warnings.warn() too: a line like every other, not Python's own format.
    logging.captureWarnings(True)
