"""File descriptors: the process's limit raised at start, and accept loops that wait out a
shortage instead of spinning.

Every connection a listener accepts costs a descriptor, and so does every file, database and
device the reconcile loop opens. With the soft limit at its usual 1024 a client that holds
a thousand connections would starve the loop (a pass fails with EMFILE) and turn each accept
loop into a busy one: a listener with a connection waiting is always readable, and an accept
that fails leaves the connection waiting. So the daemon raises its soft limit to the hard one
as it starts (`raise_descriptor_limit`), each listener bounds the connections it holds
(reconciler.daemon.control, reconciler.daemon.wsgi), and each accept loop asks an
`AcceptBackoff` how long to wait after a failed accept: a growing pause while descriptors are
short, logged once per shortage rather than once per try. Used by the daemon's listeners only.
"""

from __future__ import annotations

import errno
import resource
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

# What an accept fails with when the process or the system is short of descriptors (or of
# the memory a socket needs): the connection stays queued, so trying again at once spins.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# The first pause after a failed accept, doubled on each failure up to the last.
FIRST_PAUSE = 0.05
MAX_PAUSE = 2.0


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to its hard one (logging both); the soft limit now
    and the hard one. A limit that cannot be raised is logged and kept."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.info("daemon.descriptor_limit", soft=soft, hard=hard)
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        log.warning("daemon.descriptor_limit_kept", soft=soft, hard=hard, error=str(exc),
                    next="serving with the soft limit as it is")
        return soft, hard
    log.info("daemon.descriptor_limit", soft=hard, hard=hard, raised_from=soft)
    return hard, hard


class AcceptBackoff:
    """How long an accept loop waits after a failed accept; one log line per shortage."""

    def __init__(self, listener: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.listener = listener
        self._clock = clock
        self._pause = 0.0
        self._failures = 0
        self._since = 0.0

    @property
    def short(self) -> bool:
        """Whether the last accept failed for want of descriptors."""
        return self._failures > 0

    def failed(self, exc: OSError) -> float:
        """The pause before the next accept (0: at once, the caller gave up already)."""
        if exc.errno not in EXHAUSTED:
            log.info("accept.failed", listener=self.listener, error=str(exc),
                     next="accepting on")
            return 0.0
        if self._failures == 0:
            self._since = self._clock()
            log.warning("accept.descriptors_exhausted", listener=self.listener,
                        error=str(exc), next=f"trying again with pauses growing to "
                        f"{MAX_PAUSE:g}s; logged again when an accept succeeds")
        self._failures += 1
        self._pause = min(MAX_PAUSE, max(FIRST_PAUSE, self._pause * 2))
        return self._pause

    def accepted(self) -> None:
        """An accept succeeded: a shortage, if there was one, is over."""
        if self._failures:
            log.warning("accept.descriptors_recovered", listener=self.listener,
                        failed_accepts=self._failures,
                        seconds=round(self._clock() - self._since, 3))
        self._pause = 0.0
        self._failures = 0
