"""Parsed spec files remembered by path, so a resync over unchanged files stats them rather
than reading and parsing them again; the last full scan's SpecFiles, and the last SpecSet
resolved from them, are kept the same way.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from reconciler.specs.model import (
    DeviceSpec,
    KnownDevice,
    ParsedSpec,
    RejectedSpec,
    SpecFiles,
    SpecSet,
)
from reconciler.specs.resolve import assemble, resolve_files

# A file modified this recently is read again even if its size and mtime look unchanged:
# two writes within the filesystem's timestamp granularity would look the same (git's
# "racily clean" rule).
RACY_SECONDS = 2.0

# A remembered file: its inode, size and mtime (ns) when parsed, and what it parsed to.
Entry = tuple[int, int, int, ParsedSpec | RejectedSpec]

class SpecFileCache:
    """Parsed spec files by path, reused while a file's inode, size and mtime stay the same:
    a resync over 10,000 unchanged files stats them instead of reading and parsing them."""

    def __init__(self) -> None:
        # By path: the signature a file had when parsed (inode, size, mtime), and what it
        # parsed to, in one tuple (not a signature tuple in another: 3 MB at 50,000 files).
        self.entries: dict[str, Entry] = {}
        # The directory the entries are all of, once a full scan filled them; None before.
        self.scanned: Path | None = None
        # The spec directory's filesystem (st_dev) when it was last read completely.
        self.device: int | None = None
        # The last full scan's parsed files, in order, the node they were selected for, and
        # the SpecFiles made of them.
        self._last: tuple[list[ParsedSpec | RejectedSpec], str | None, SpecFiles] | None = None
        # The last resolution: its files, the store's specs, the known devices it asked for
        # (None: it had none to ask), and its SpecSet.
        self._resolved: tuple[SpecFiles, list[DeviceSpec],
                              dict[str, KnownDevice | None] | None, SpecSet] | None = None

    def get(self, path: str, signature: tuple[int, int, int],
            now_ns: int) -> ParsedSpec | RejectedSpec | None:
        """The parsed spec of an unchanged file, or None (read it)."""
        entry = self.entries.get(path)
        if entry is None or entry[:3] != signature:
            return None
        if abs(now_ns - signature[2]) < RACY_SECONDS * 1e9:
            return None
        return entry[3]

    def put(self, path: str, signature: tuple[int, int, int],
            parsed: ParsedSpec | RejectedSpec) -> None:
        """Remember a file's parsed spec."""
        self.entries[path] = (*signature, parsed)

    def full_scan(self, found: list[ParsedSpec | RejectedSpec], seen: list[str],
                  directory: Path, device: int, node: str | None) -> SpecFiles:
        """Remember a full scan of `directory`: its files (`seen`, the paths parsed, each
        put or found here by the scan), its rejected entries (kept: a broken entry's name
        keeps its device), and its SpecFiles."""
        if len(self.entries) != len(seen):
            # Every path seen is an entry: as many entries as paths, and none is gone.
            self.keep_only(set(seen))
        self.scanned = directory
        self.device = device
        for item in found:
            if isinstance(item, RejectedSpec) and item.path not in seen:
                self.put(item.path, (0, 0, 0), item)
        return self.spec_files(found, directory, device, node)

    def spec_files(self, found: list[ParsedSpec | RejectedSpec], directory: Path,
                   device: int | None, node: str | None = None) -> SpecFiles:
        """The SpecFiles of a full scan: the last one when the scan found the very same parsed
        files (the same objects, which `get` hands back for unchanged files) in the same
        directory, so that `resolved` can tell nothing changed."""
        last = self._last
        if last is not None and len(last[0]) == len(found) \
                and all(map(operator.is_, last[0], found)) and last[1] == node \
                and last[2].directory_device == device and self.scanned == directory:
            return last[2]
        made = assemble(found, directory, device, node)
        self._last = (found, node, made)
        return made

    def resolved(self, files: SpecFiles, directory: Path, stored: Mapping[str, DeviceSpec],
                 known_parents: Mapping[str, KnownDevice] | None) -> SpecSet:
        """`resolve_files` of these inputs: the last SpecSet again when they are the last
        ones (the same SpecFiles and stored spec objects, and the known devices the last
        resolution asked for unchanged), so a resync over unchanged files and devices
        resolves no parents again. Only the devices asked for are compared: a resolution
        asks only for the parents that have no spec, however many devices are known."""
        values = list(stored.values())
        last = self._resolved
        if last is not None and last[0] is files and len(last[1]) == len(values) \
                and all(map(operator.is_, last[1], values)) \
                and _same_answers(last[2], known_parents):
            return last[3]
        asked = None if known_parents is None else _Asked(known_parents)
        made = resolve_files(files, directory, stored, asked)
        self._resolved = (files, values, None if asked is None else asked.answers, made)
        return made

    def keep_only(self, paths: set[str]) -> None:
        """Forget files that are gone."""
        for path in set(self.entries) - paths:
            del self.entries[path]

    def forget(self, path: str) -> None:
        """A file that is gone."""
        self.entries.pop(path, None)

    def parsed(self) -> list[ParsedSpec | RejectedSpec]:
        """Every remembered file's parsed spec."""
        return [entry[3] for entry in self.entries.values()]


class _Asked(Mapping[str, KnownDevice]):
    """Known devices, with a note of every name looked up and what it answered."""

    def __init__(self, known: Mapping[str, KnownDevice]) -> None:
        self._known = known
        self.answers: dict[str, KnownDevice | None] = {}

    def __getitem__(self, name: str) -> KnownDevice:
        found = self._known.get(name)
        self.answers[name] = found
        if found is None:
            raise KeyError(name)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)


def _same_answers(answers: dict[str, KnownDevice | None] | None,
                  known: Mapping[str, KnownDevice] | None) -> bool:
    """Whether `known` answers what a resolution was answered (`answers`, None: it was
    given no known devices)."""
    if answers is None or known is None:
        return answers is None and known is None
    return all(known.get(name) == found for name, found in answers.items())


def signature(st: os.stat_result) -> tuple[int, int, int]:
    """What SpecFileCache compares to tell an unchanged file."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)
