"""File events on the spec directory, turned into device names on the wake-up queue.

Only changes wake the daemon: a file created, written, moved or deleted. Every pass opens and
reads spec files, and a file that looks freshly written (modified in the last two seconds, or
dated in the future) is read on every pass; had opens and read-only closes counted, the
daemon's own reads would wake it again and again.

The watcher never makes the spec directory: a typo in `spec_dir` must not become a new empty
directory that looks like "every spec file is gone". While the directory is missing it
watches nothing; the daemon calls `refresh` on every full pass, which starts watching once the
directory exists (and again after it was deleted and made anew). Events are only hints: the
full pass reads the directory whatever the watcher saw.

A Kubernetes ConfigMap volume changes differently: kubelet writes the new payload into a new
hidden directory and renames a `..data_tmp` symlink over `..data`, through which every key's
link (`x.toml -> ..data/x.toml`) reads; an edited key's own entry never changes. The rename
onto `..data` (a symlink, so a file event) asks for a full read of the directory.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import structlog
from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    DirDeletedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from reconciler.daemon.wakeups import Wakeups
from reconciler.specs import CONFIGMAP_DATA, is_spec_file

log = structlog.get_logger(__name__)

# What inotify is asked for: the kernel does not even report opens and read-only closes.
# DirDeletedEvent is how the watched directory's own deletion arrives.
_SUBSCRIBED: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, FileClosedEvent,
    DirDeletedEvent,
]
# A close after a write is a change (the writer is done); a metadata change (touch, chmod)
# arrives as an attrib event and is not one: the next full pass sees it.
_CHANGES = frozenset({EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED,
                      EVENT_TYPE_DELETED, EVENT_TYPE_CLOSED})


def wakes(event: FileSystemEvent) -> bool:
    """True when the event says a file's content or presence changed."""
    return not event.is_directory and event.event_type in _CHANGES


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else os.fsdecode(raw)


class _Handler(FileSystemEventHandler):
    def __init__(self, directory: Path, wakeups: Wakeups) -> None:
        self.directory = directory
        self.wakeups = wakeups
        # Set from the watchdog thread when the watched directory itself is deleted: its
        # watch is dead even if a directory of the same name (and inode) appears again.
        self.lost = threading.Event()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if event.event_type == EVENT_TYPE_DELETED \
                    and Path(_text(event.src_path)) == self.directory:
                self.lost.set()
            return
        if not wakes(event):
            return
        for raw in (event.src_path, event.dest_path):
            if not raw:
                continue
            path = Path(_text(raw))
            # Temp files of editors and atomic writers are not specs; their rename is.
            if is_spec_file(path):
                self.wakeups.add(path.stem)
            elif path.name == CONFIGMAP_DATA and path.parent == self.directory:
                # kubelet renamed `..data_tmp` over `..data`: every key's link now leads to
                # new content, though no key's own entry changed.
                self.wakeups.add_all()


class SpecWatcher:
    """Watches one directory (not recursively) while started, once it exists."""

    def __init__(self, directory: Path, wakeups: Wakeups) -> None:
        self.directory = directory
        self._wakeups = wakeups
        self._observer = Observer()
        self._handler: _Handler | None = None
        self._watch: ObservedWatch | None = None
        self._identity: tuple[int, int] | None = None
        # The directory last warned about, so a missing one is said once, not every resync.
        self._warned: Path | None = None

    @property
    def watching(self) -> bool:
        """True while the directory is watched (False once it is seen deleted)."""
        return self._handler is not None and not self._handler.lost.is_set()

    def start(self) -> None:
        """Start the watchdog thread and watch the directory if it exists."""
        self._observer.start()
        self.refresh()

    def refresh(self) -> bool:
        """Watch the directory if it exists now, or exists anew since it was watched; True
        while it is watched. Never makes it."""
        try:
            found = os.stat(self.directory)
        except OSError:
            found = None
        identity = (found.st_dev, found.st_ino) \
            if found is not None and stat.S_ISDIR(found.st_mode) else None
        if identity is not None and identity == self._identity and self.watching:
            return True
        self._unschedule()
        if identity is None:
            if self._warned != self.directory:
                self._warned = self.directory
                log.warning("watch.directory_missing", spec_dir=str(self.directory),
                            next="watching nothing; each full pass looks for it again")
            return False
        handler = _Handler(self.directory, self._wakeups)
        try:
            self._watch = self._observer.schedule(handler, str(self.directory),
                                                  recursive=False, event_filter=_SUBSCRIBED)
        except OSError as exc:  # out of inotify watches, or the directory went meanwhile
            log.warning("watch.failed", spec_dir=str(self.directory), error=exc.strerror,
                        next="each full pass tries again")
            return False
        self._handler, self._identity, self._warned = handler, identity, None
        log.info("watch.started", spec_dir=str(self.directory))
        return True

    def watch(self, directory: Path) -> bool:
        """Watch another directory instead (after a reload); True when it is watched."""
        if directory != self.directory:
            self._unschedule()
            self.directory = directory
        return self.refresh()

    def _unschedule(self) -> None:
        if self._watch is not None:
            self._observer.unschedule(self._watch)
        self._watch, self._handler, self._identity = None, None, None

    def stop(self) -> None:
        """Stop and join the watchdog thread."""
        self._observer.stop()
        self._observer.join(timeout=5)
