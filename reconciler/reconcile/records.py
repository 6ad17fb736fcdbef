"""The Reconciler's cache of device records, and when it must be read again from the store.

The reconcile thread is the only writer of device rows, so a pass can reuse the records the
last one left instead of reading 10,000 rows. That holds only while nobody else wrote the
database (another process, a queued operator request), the last pass ended normally (not
stopped, no device left unsaved by an error nobody foresaw) and recovery has run; and every
`reread_every` full passes the rows are read anyway (belt and braces: a resync is where
anything missed gets caught). These rules live here, in one place, beside the dict the pass
context changes in place. Below the pass context: it knows the store and nothing of passes.
"""

from __future__ import annotations

from reconciler.store import DeviceRecord, Store

# A full pass reuses the records the last pass left when no one else wrote the database;
# every this many full passes it reads them again anyway.
RECORDS_REREAD_EVERY = 10


class RecordCache:
    """Every device record by name (Removed ones included), and whether it is the store's."""

    def __init__(self, store: Store, reread_every: int = RECORDS_REREAD_EVERY) -> None:
        self.store = store
        self.reread_every = reread_every
        # Changed in place by the passes (the pass context holds this very dict).
        self.records: dict[str, DeviceRecord] = {}
        # Whether `records` is what the store holds (the last pass ended normally).
        self._current = False
        # An error nobody foresaw left a device's record unsaved: the next pass reads rows.
        self._suspect = False
        self._full_passes_since_read = 0

    def start_pass(self, recovered: bool, full: bool, few: bool) -> bool:
        """Make `records` fit for a pass that begins now, reading the rows unless the cache
        may be trusted. Returns whether the pass may be targeted (a partial pass over `few`
        names that observes only them): only when the cache was current.

        `recovered`: start-up recovery has run (before it, rows are always read); `full`: a
        pass over every device (it counts toward `reread_every`)."""
        # Asked every pass, so that "written by others" covers exactly the last pass.
        others = self.store.written_by_others()
        current = (recovered and self._current and not others
                   and not self.store.has_requests())
        targeted = current and few
        self._full_passes_since_read += full
        if not (targeted or (current and self._full_passes_since_read < self.reread_every)):
            self.read()
        # Until the pass ends normally, what is in memory may be ahead of the store.
        self._current = False
        return targeted

    def end_pass(self, stopped: bool) -> None:
        """The pass ended; a stopped one (or one that distrusted a record) leaves the cache
        to be read again."""
        self._current = not (stopped or self._suspect)
        self._suspect = False

    def distrust(self) -> None:
        """What is in memory may be ahead of what was saved: the next pass reads the rows."""
        self._current = False
        self._suspect = True

    def stale(self) -> None:
        """The next pass reads the rows (a reload: what the records were read against
        changed), with no suspicion of what is in memory now."""
        self._current = False

    def read(self) -> None:
        """Read every row now (the cache is then not trusted by the next pass until a pass
        ends normally)."""
        self.records.clear()
        self.records.update((r.name, r) for r in self.store.devices(include_removed=True))
        self._full_passes_since_read = 0
        self._current = False
