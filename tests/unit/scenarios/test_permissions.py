"""What the daemon writes under root_path is its own: the database (and its -wal and -shm)
and the lock file are 0600, a root_path we create is 0700, and a link planted at the lock's
path is refused, never followed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from reconciler.cli import main
from reconciler.daemon.lock import RootLock, UnsafeLockFile, holder_pid
from reconciler.store import ConditionKind, Store
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _database_files(db: Path) -> dict[str, int]:
    """The mode of the database and of each side file SQLite has made beside it."""
    return {p.name: _mode(p) for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"))
            if p.exists()}


def test_the_database_and_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    """A new database, its -wal and its -shm are 0600, and a root_path made for it 0700."""
    db = tmp_path / "root" / "reconciler.db"
    store = Store(db, lambda: 0.0)
    try:
        store.set_condition(ConditionKind.PASS_FAILED, "written, so the WAL holds a page")
        assert _database_files(db) == {"reconciler.db": 0o600, "reconciler.db-wal": 0o600,
                                       "reconciler.db-shm": 0o600}
    finally:
        store.close()
    assert _mode(db.parent) == 0o700


def test_a_database_left_readable_by_all_is_made_private_at_open(tmp_path: Path) -> None:
    """Files an earlier version made 0644 are 0600 once a store opens them (the WAL files
    of another open connection included)."""
    db = tmp_path / "reconciler.db"
    first = Store(db, lambda: 0.0)
    try:
        first.set_condition(ConditionKind.PASS_FAILED, "x")
        for name in _database_files(db):
            os.chmod(tmp_path / name, 0o644)
        assert set(_database_files(db).values()) == {0o644}
        second = Store(db, lambda: 0.0)
        try:
            assert second.condition(ConditionKind.PASS_FAILED) is not None
        finally:
            second.close()
        assert _database_files(db) == {"reconciler.db": 0o600, "reconciler.db-wal": 0o600,
                                       "reconciler.db-shm": 0o600}
    finally:
        first.close()


def test_the_lock_file_is_private_and_a_wider_one_is_tightened(tmp_path: Path) -> None:
    """The lock file is made 0600; one left 0644 is 0600 once the lock is taken."""
    lock = RootLock(tmp_path)
    lock.acquire()
    lock.release()
    assert _mode(tmp_path / "reconciler.lock") == 0o600
    os.chmod(tmp_path / "reconciler.lock", 0o644)
    lock.acquire()
    try:
        assert _mode(tmp_path / "reconciler.lock") == 0o600
        assert holder_pid(tmp_path) == os.getpid()
    finally:
        lock.release()


def test_a_root_path_the_lock_creates_is_private(tmp_path: Path) -> None:
    """A missing root_path is made 0700 (its missing parents too, with the umask's mode)."""
    root = tmp_path / "a" / "root"
    lock = RootLock(root)
    lock.acquire()
    lock.release()
    assert _mode(root) == 0o700


def test_an_operators_open_root_path_is_kept_and_warned_of(tmp_path: Path) -> None:
    """An existing root_path that others may write to keeps its mode, with a warning."""
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o777)
    lock = RootLock(root)
    with capture_logs() as logs:
        lock.acquire()
    lock.release()
    assert _mode(root) == 0o777
    warnings = [e["mode"] for e in logs if e["event"] == "root_path.writable_by_others"]
    assert warnings == ["0777"]


def test_a_symlink_at_the_lock_path_is_refused_and_not_followed(tmp_path: Path) -> None:
    """A symbolic link planted at the lock's path is refused with a clear error; the file
    it points to is not truncated, written or made."""
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / "reconciler.lock").symlink_to(precious)
    (tmp_path / "root2").mkdir()
    (tmp_path / "root2" / "reconciler.lock").symlink_to(tmp_path / "not-there")
    with pytest.raises(UnsafeLockFile, match="symbolic link"):
        RootLock(root).acquire()
    with pytest.raises(UnsafeLockFile, match="symbolic link"):
        RootLock(tmp_path / "root2").acquire()
    assert precious.read_text() == "keep me\n" and _mode(precious) == 0o644
    assert not (tmp_path / "not-there").exists()
    assert holder_pid(root) is None


def test_a_hard_link_at_the_lock_path_is_refused(tmp_path: Path) -> None:
    """A hard link to another file at the lock's path is refused, the file left as it was."""
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    root = tmp_path / "root"
    root.mkdir()
    os.link(precious, root / "reconciler.lock")
    with pytest.raises(UnsafeLockFile, match="hard link"):
        RootLock(root).acquire()
    assert precious.read_text() == "keep me\n" and _mode(precious) == 0o644


def test_run_once_refuses_a_planted_lock_symlink_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`reconciler run --once` exits 1 with one line naming the lock path, and writes
    nothing through the link."""
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / "reconciler.lock").symlink_to(precious)
    config = write_config(tmp_path / "config.toml", root_path=root, dm_driver="dmsetup")
    capsys.readouterr()
    assert main(["-c", str(config), "run", "--once"], host=FakeKernel()) == 1
    said = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("{")]
    assert len(said) == 1 and str(root / "reconciler.lock") in said[0]
    assert precious.read_text() == "keep me\n"
