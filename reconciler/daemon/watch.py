"""File events on the spec directory, turned into device names on the wake-up queue."""

from __future__ import annotations

from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from reconciler.daemon.wakeups import Wakeups
from reconciler.specs import is_spec_file


class _Handler(FileSystemEventHandler):
    def __init__(self, wakeups: Wakeups) -> None:
        self.wakeups = wakeups

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            path = Path(raw if isinstance(raw, str) else raw.decode())
            # Temp files of editors and atomic writers are not specs; their rename is.
            if is_spec_file(path):
                self.wakeups.add(path.stem)


class SpecWatcher:
    """Watches one directory (not recursively) while started."""

    def __init__(self, directory: Path, wakeups: Wakeups) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._observer = Observer()
        self._observer.schedule(_Handler(wakeups), str(directory), recursive=False)

    def start(self) -> None:
        """Start the watchdog thread."""
        self._observer.start()

    def stop(self) -> None:
        """Stop and join the watchdog thread."""
        self._observer.stop()
        self._observer.join(timeout=5)
