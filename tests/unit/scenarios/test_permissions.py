"""What the daemon writes under root_path is its own: the database (and its -wal and -shm)
and the lock file are 0600, a root_path we create is 0700, a root_path others may write to
is refused, and a link (or anything but a plain file of ours) planted at the lock's, the
database's or a loopback file's path is refused, never followed (issue 23, finding 8)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.daemon.lock import RootLock, UnsafeLockFile, holder_pid
from reconciler.store import ConditionKind, Store, StoreError
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


def test_an_operators_open_root_path_is_refused_by_the_lock(tmp_path: Path) -> None:
    """An existing root_path that others may write to is refused (they could plant links
    there), its mode left as it is and no lock file made."""
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(UnsafeLockFile, match="writable by others"):
        RootLock(root).acquire()
    assert _mode(root) == 0o777
    assert not (root / "reconciler.lock").exists()


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


def _one_line(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What a command said on stderr besides its JSON log lines."""
    return [line for line in capsys.readouterr().err.splitlines() if not line.startswith("{")]


def _planted(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """A root_path with a link at `name` to a file of someone's (0644, "keep me"), and a
    config for it: (root, the file linked to, config)."""
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    root = tmp_path / "root"
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).symlink_to(precious)
    config = write_config(tmp_path / "config.toml", root_path=root, dm_driver="dmsetup")
    return root, precious, config


@pytest.mark.parametrize("argv", [["run", "--once"], ["status"], ["status", "--check"],
                                  ["plan"], ["confirm-removals"]])
@pytest.mark.parametrize("name", ["reconciler.db", "reconciler.db-wal", "reconciler.db-shm"])
def test_a_link_at_the_database_path_is_refused_and_not_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], name: str
) -> None:
    """A link planted at the database's path (or its -wal's or -shm's) is refused in one
    line naming it, exit 1 (`status --check`: its verdict, down, exit 2, with the store
    unusable for a reason on its line); the file it points to keeps its mode and content."""
    if name != "reconciler.db":  # the database itself is ours; the side file is not
        Store(tmp_path / "root" / "reconciler.db", lambda: 0.0).close()
    root, precious, config = _planted(tmp_path, name)
    capsys.readouterr()
    verdict = argv == ["status", "--check"]
    assert main(["-c", str(config), *argv], host=FakeKernel()) == (2 if verdict else 1)
    if verdict:
        said = capsys.readouterr().out.splitlines()
        assert len(said) == 1 and "store unusable (" in said[0]
    else:
        said = _one_line(capsys)
    assert len(said) == 1 and str(root / name) in said[0] and "symbolic link" in said[0]
    assert precious.read_text() == "keep me\n" and _mode(precious) == 0o644


def test_a_dangling_link_at_the_database_path_makes_no_file(tmp_path: Path) -> None:
    """A link to nothing at the database's path: the store refuses it; no file is made
    where it points."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "reconciler.db").symlink_to(tmp_path / "made-through-the-link")
    with pytest.raises(StoreError, match="symbolic link"):
        Store(root / "reconciler.db", lambda: 0.0)
    assert not (tmp_path / "made-through-the-link").exists()


@pytest.mark.parametrize("what", ["hard link", "other owner", "directory", "fifo"])
def test_a_database_that_is_not_a_plain_file_of_ours_is_refused(tmp_path: Path,
                                                                what: str) -> None:
    """A hard link, a file of another user, a directory or a FIFO at the database's path:
    a StoreError naming it, and the file left as it was."""
    other = tmp_path / "other"
    other.write_text("keep me\n")
    db = tmp_path / "root" / "reconciler.db"
    db.parent.mkdir()
    if what == "hard link":
        os.link(other, db)
    elif what == "other owner":
        db.write_text("")
        os.chown(db, 4242, -1)
    elif what == "directory":
        db.mkdir()
    else:
        os.mkfifo(db)
    with pytest.raises(StoreError) as caught:
        Store(db, lambda: 0.0)
    assert str(db) in str(caught.value)
    assert other.read_text() == "keep me\n" and _mode(other) == 0o644


@pytest.mark.parametrize("argv", [["run", "--once"], ["status"], ["plan"], ["resync"]])
def test_a_database_file_that_is_not_sqlite_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """A database file that is not SQLite (a wrong restore, junk) is refused in one line
    naming it, exit 1, never a traceback; the file is left as it was."""
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    junk = b"this is not a database\n" * 200
    (root / "reconciler.db").write_bytes(junk)
    (root / "reconciler.db").chmod(0o600)
    config = write_config(tmp_path / "config.toml", root_path=root, dm_driver="dmsetup")
    capsys.readouterr()
    assert main(["-c", str(config), *argv], host=FakeKernel()) == 1
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if not line.startswith("{")]
    assert len(said) == 1 and str(root / "reconciler.db") in said[0]
    assert "not a SQLite database" in said[0] and "Traceback" not in err
    assert (root / "reconciler.db").read_bytes() == junk


@pytest.mark.parametrize("name", ["loopback/data", "loopback/metadata", "loopback"])
def test_a_link_at_a_loopback_path_is_refused_and_not_attached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A link at a loopback file's path (or at the loopback directory) is not followed: the
    pass fails naming it, nothing is attached, and the file it points to is untouched."""
    if name == "loopback":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "data").write_text("keep me\n")
        root = tmp_path / "root"
        root.mkdir()
        (root / "loopback").symlink_to(tmp_path / "elsewhere")
        precious = tmp_path / "elsewhere" / "data"
        config = write_config(tmp_path / "config.toml", root_path=root, dm_driver="dmsetup")
    else:
        root, precious, config = _planted(tmp_path, name)
    kernel = FakeKernel()
    capsys.readouterr()
    assert main(["-c", str(config), "run", "--once"], host=kernel) == 1
    err = capsys.readouterr().err
    assert str(root / name) in err and "symbolic link" in err
    assert kernel.loops == {}
    assert precious.read_text() == "keep me\n" and _mode(precious) == 0o644
