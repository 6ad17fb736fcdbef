"""structlog configuration: the one place it is configured (everything else only logs).

JSON lines when stderr is not a terminal (journald, files, tests), readable console lines on a
terminal. Events are named `noun.verb` (device.state_changed) and say what happens next.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

LEVELS = ("debug", "info", "warning", "error")


class _StderrLogger:
    """Writes each rendered line to whatever sys.stderr is at that moment (tests swap it)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = error = critical = exception = msg


def _stderr_logger(*args: Any) -> _StderrLogger:
    del args
    return _StderrLogger()


def configure(level: str = "info", json: bool | None = None) -> None:
    """Set up structlog for the process; `json` defaults to "stderr is not a TTY"."""
    use_json = not sys.stderr.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
