"""Parsed spec files remembered by path, so a resync over unchanged files stats them rather
than reading and parsing them again; the last full scan's SpecSet is kept the same way.
"""

from __future__ import annotations

import operator
import os
from pathlib import Path

from reconciler.specs.model import DeviceSpec, RejectedSpec, SpecSet
from reconciler.specs.resolve import assemble

# A file modified this recently is read again even if its size and mtime look unchanged:
# two writes within the filesystem's timestamp granularity would look the same (git's
# "racily clean" rule).
RACY_SECONDS = 2.0

class SpecFileCache:
    """Parsed spec files by path, reused while a file's inode, size and mtime stay the same:
    a resync over 10,000 unchanged files stats them instead of reading and parsing them."""

    def __init__(self) -> None:
        # By path: the signature a file had when parsed, and what it parsed to.
        self.entries: dict[str, tuple[tuple[int, int, int], DeviceSpec | RejectedSpec]] = {}
        # The directory the entries are all of, once a full scan filled them; None before.
        self.scanned: Path | None = None
        # The spec directory's filesystem (st_dev) when it was last read completely.
        self.device: int | None = None
        # The last full scan's parsed files, in order, the node they were selected for, and
        # the SpecSet made of them.
        self._last: tuple[list[DeviceSpec | RejectedSpec], str | None, SpecSet] | None = None

    def get(self, path: str, signature: tuple[int, int, int],
            now_ns: int) -> DeviceSpec | RejectedSpec | None:
        """The parsed spec of an unchanged file, or None (read it)."""
        entry = self.entries.get(path)
        if entry is None or entry[0] != signature:
            return None
        if abs(now_ns - signature[2]) < RACY_SECONDS * 1e9:
            return None
        return entry[1]

    def put(self, path: str, signature: tuple[int, int, int],
            parsed: DeviceSpec | RejectedSpec) -> None:
        """Remember a file's parsed spec."""
        self.entries[path] = (signature, parsed)

    def full_scan(self, found: list[DeviceSpec | RejectedSpec], seen: set[str],
                  directory: Path, device: int, node: str | None) -> SpecSet:
        """Remember a full scan of `directory`: its files (`seen`, the paths parsed), its
        rejected entries (kept: a broken entry's name keeps its device), and its SpecSet."""
        self.keep_only(seen)
        self.scanned = directory
        self.device = device
        for item in found:
            if isinstance(item, RejectedSpec) and item.path not in seen:
                self.put(item.path, (0, 0, 0), item)
        return self.spec_set(found, directory, device, node)

    def spec_set(self, found: list[DeviceSpec | RejectedSpec], directory: Path,
                 device: int | None, node: str | None = None) -> SpecSet:
        """The SpecSet of a full scan: the last one when the scan found the very same parsed
        files (the same objects, which `get` hands back for unchanged files) in the same
        directory, so a resync over unchanged files resolves no parents again."""
        last = self._last
        if last is not None and len(last[0]) == len(found) \
                and all(map(operator.is_, last[0], found)) and last[1] == node \
                and last[2].directory_device == device and self.scanned == directory:
            return last[2]
        made = assemble(found, directory, device, node)
        self._last = (found, node, made)
        return made

    def keep_only(self, paths: set[str]) -> None:
        """Forget files that are gone."""
        for path in set(self.entries) - paths:
            del self.entries[path]

    def forget(self, path: str) -> None:
        """A file that is gone."""
        self.entries.pop(path, None)

    def parsed(self) -> list[DeviceSpec | RejectedSpec]:
        """Every remembered file's parsed spec."""
        return [parsed for _, parsed in self.entries.values()]


def signature(st: os.stat_result) -> tuple[int, int, int]:
    """What SpecFileCache compares to tell an unchanged file."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)
