"""The spec watcher: only changes wake the daemon, and it never makes the spec directory."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import watchdog.events
from structlog.testing import capture_logs
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
)

from reconciler.daemon.service import Daemon
from reconciler.daemon.wakeups import Wakeups
from reconciler.daemon.watch import SpecWatcher, wakes
from reconciler.testing.world import World


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (FileCreatedEvent("/s/a.toml"), True),
        (FileModifiedEvent("/s/a.toml"), True),
        (FileDeletedEvent("/s/a.toml"), True),
        (FileMovedEvent("/s/.a.toml.tmp", "/s/a.toml"), True),
        (FileClosedEvent("/s/a.toml"), True),
        (FileOpenedEvent("/s/a.toml"), False),
        # watchdog 4 (our floor) has no read-only close event at all (IN_CLOSE_NOWRITE came
        # in 5): nothing there to ignore.
        *([(watchdog.events.FileClosedNoWriteEvent("/s/a.toml"), False)]
          if hasattr(watchdog.events, "FileClosedNoWriteEvent") else []),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, FileSystemEvent) else str(v),
)
def test_only_changes_wake_the_daemon(event: FileSystemEvent, expected: bool) -> None:
    """Created, modified, moved, deleted and closed-after-write name the spec; an open or a
    read-only close (the daemon reading the file) names nothing."""
    assert wakes(event) is expected


def _wait_for_names(wakeups: Wakeups, timeout: float = 5.0) -> set[str]:
    """The names the watcher's thread has queued within `timeout`."""
    deadline = time.monotonic() + timeout
    while wakeups.pending() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # watchdog delivers on its own thread
    return wakeups.take(0).names


@pytest.fixture
def watcher_on(tmp_path: Path) -> Iterator[tuple[SpecWatcher, Wakeups, Path]]:
    """A started watcher of tmp_path/specs, which does not exist yet."""
    wakeups = Wakeups(settle=0.01)
    directory = tmp_path / "specs"
    watcher = SpecWatcher(directory, wakeups)
    with capture_logs() as events:
        watcher.start()
    assert any(e["event"] == "watch.directory_missing" for e in events)
    yield watcher, wakeups, directory
    watcher.stop()


def test_the_watcher_never_makes_the_spec_directory(
    watcher_on: tuple[SpecWatcher, Wakeups, Path],
) -> None:
    """A missing spec_dir stays missing: the watcher watches nothing and says so."""
    watcher, _, directory = watcher_on
    assert not directory.exists()
    assert not watcher.refresh()
    assert not directory.exists()


def test_the_watcher_starts_watching_once_the_directory_appears(
    watcher_on: tuple[SpecWatcher, Wakeups, Path],
) -> None:
    """After the operator makes spec_dir, the next refresh watches it and its files wake us."""
    watcher, wakeups, directory = watcher_on
    directory.mkdir()
    assert watcher.refresh()
    (directory / "web.toml").write_text('filesystem = "none"\n')
    assert _wait_for_names(wakeups) == {"web"}


def test_a_spec_dir_that_is_a_file_is_not_watched(tmp_path: Path) -> None:
    """A spec_dir that is a regular file is left alone and not watched."""
    path = tmp_path / "specs"
    path.write_text("")
    watcher = SpecWatcher(path, Wakeups())
    try:
        watcher.start()
        assert not watcher.refresh()
        assert path.is_file()
    finally:
        watcher.stop()


def test_a_directory_made_again_is_watched_again(
    watcher_on: tuple[SpecWatcher, Wakeups, Path],
) -> None:
    """spec_dir deleted is noticed, and once made again it is watched anew at the next
    refresh (even if the new directory reuses the old inode)."""
    watcher, wakeups, directory = watcher_on
    directory.mkdir()
    assert watcher.refresh()
    assert watcher.watching
    directory.rmdir()
    deadline = time.monotonic() + 5
    while watcher.watching and time.monotonic() < deadline:
        time.sleep(0.01)  # the deletion arrives on watchdog's thread
    assert not watcher.watching
    directory.mkdir()
    assert watcher.refresh()
    wakeups.take(0)
    (directory / "db.toml").write_text("")
    assert _wait_for_names(wakeups) == {"db"}


def test_watching_another_directory_leaves_the_first(tmp_path: Path) -> None:
    """After watch(new), files of the new directory wake us and those of the old do not."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    wakeups = Wakeups(settle=0.01)
    watcher = SpecWatcher(old, wakeups)
    try:
        watcher.start()
        watcher.watch(new)
        (old / "stale.toml").write_text("")
        (new / "fresh.toml").write_text("")
        assert _wait_for_names(wakeups) == {"fresh"}
    finally:
        watcher.stop()


def test_the_daemons_own_reads_of_a_future_dated_spec_cause_no_passes(
    fake_world: World,
) -> None:
    """A spec whose mtime is an hour ahead is read again on every pass (it always looks
    freshly written); the daemon's own reads must not wake it, so a quiet second brings at
    most one more pass, not one every 50ms."""
    assert fake_world.store is not None
    fake_world.store.close()
    path = fake_world.spec("web", 'filesystem = "none"\n')
    ahead = time.time() + 3600
    os.utime(path, (ahead, ahead))
    daemon = Daemon(fake_world.settings, fake_world.host, clock=fake_world.clock,
                    wakeups=Wakeups(settle=0.01))
    try:
        daemon.start()
        after_start = daemon.passes
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            daemon.step(timeout=0.05)
        assert after_start == 1
        assert daemon.passes - after_start <= 1
    finally:
        daemon.close()


def test_the_daemon_does_not_make_a_missing_spec_dir_and_watches_it_once_made(
    fake_world: World, tmp_path: Path,
) -> None:
    """Started with a spec_dir that does not exist, the daemon leaves it absent; once made,
    the next full pass watches it and a dropped spec is made on its file event."""
    assert fake_world.store is not None
    fake_world.store.close()
    directory = tmp_path / "later"
    settings = replace(fake_world.settings, spec_dir=directory)
    daemon = Daemon(settings, fake_world.host, clock=fake_world.clock,
                    wakeups=Wakeups(settle=0.01))
    try:
        daemon.start()
        assert not directory.exists()
        directory.mkdir()
        daemon.wakeups.resync()
        daemon.step(timeout=0)
        (directory / "web.toml").write_text('filesystem = "none"\n')
        passes = daemon.passes
        deadline = time.monotonic() + 5
        while daemon.passes == passes and time.monotonic() < deadline:
            daemon.step(timeout=0.1)
        assert daemon.store.device("web") is not None
    finally:
        daemon.close()
