"""`reconciler plan`: read-only by construction (no file created, no byte changed), `--json`,
removals named as removals, and no device-mapper reported in one line."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import peewee
import pytest

from reconciler.cli import main
from reconciler.dm.host import Completed, SystemHost
from reconciler.store import RequestKind, Store
from reconciler.testing.config_file import write_config
from reconciler.testing.fakekernel import FakeKernel


def _write_config(path: Path, **extra: object) -> Path:
    """The plan tests' config beside `path`: a small loopback pool, plus `extra` keys."""
    return write_config(path, root_path=path.parent / "state", spec_dir=path.parent / "specs",
                        pool_name="planpool", loopback_data_size="256MiB",
                        loopback_metadata_size="8MiB", base_image_size="32MiB", **extra)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config over a small loopback pool, its spec_dir holding two devices."""
    path = _write_config(tmp_path / "config.toml")
    (tmp_path / "specs").mkdir()
    for name in ("keep", "gone"):
        (tmp_path / "specs" / f"{name}.toml").write_text('filesystem = "none"\n')
    return path


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root (loop files excepted: the kernel's, not the store's), by
    relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "loopback" not in p.parts}


class _NoDeviceMapper(SystemHost):
    """This machine as a host without device-mapper tools: every program is missing."""

    def run(self, argv: Sequence[str]) -> Completed:
        return Completed(tuple(argv), 127, "", f"{argv[0]}: command not found\n")


def test_plan_leaves_the_database_byte_identical(config: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """After a pass, with work to plan (a new spec, a deleted one), `plan` leaves every
    file under root_path byte for byte as it was: no row, no counter, no side file."""
    host = FakeKernel()
    assert main(["-c", str(config), "run", "--once"], host=host) == 0
    specs = config.parent / "specs"
    (specs / "gone.toml").unlink()
    (specs / "new.toml").write_text('filesystem = "none"\n')
    root = config.parent / "state"
    before = _files(root)
    assert "reconciler.db" in before
    capsys.readouterr()
    assert main(["-c", str(config), "plan"], host=host) == 0
    assert capsys.readouterr().out.splitlines() == [
        "gone  remove: deactivate, then delete its thin id",
        "keep  nothing",
        "new   create",
    ]
    assert _files(root) == before


def test_plan_creates_no_database_when_there_is_none(config: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    """Before the daemon ever ran, `plan` says what a first pass would do and creates
    nothing: not root_path, not a database."""
    host = FakeKernel()
    assert main(["-c", str(config), "plan"], host=host) == 0
    assert capsys.readouterr().out.splitlines() == ["(pool)  create pool planpool"]
    assert not (config.parent / "state").exists()


def test_plan_reads_beside_a_writer_and_changes_nothing(config: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """With another connection holding the database open (as a running daemon does: its
    -wal and -shm exist), `plan` reads through them and leaves the database and its -wal
    as they were."""
    host = FakeKernel()
    assert main(["-c", str(config), "run", "--once"], host=host) == 0
    database = config.parent / "state" / "reconciler.db"
    writer = sqlite3.connect(database)
    try:
        writer.execute("PRAGMA journal_mode=wal")
        writer.execute("UPDATE devices SET attempts = attempts WHERE name = 'keep'")
        writer.commit()
        wal = Path(f"{database}-wal")
        assert wal.exists()
        before = (database.read_bytes(), wal.read_bytes())
        capsys.readouterr()
        assert main(["-c", str(config), "plan"], host=host) == 0
        assert capsys.readouterr().out.splitlines() == ["gone  nothing", "keep  nothing"]
        assert (database.read_bytes(), wal.read_bytes()) == before
    finally:
        writer.close()


def test_plan_json_is_one_document(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`plan --json`: one line of JSON, its schema version, the pool's name and each
    device's action as a word and in prose."""
    host = FakeKernel()
    assert main(["-c", str(config), "run", "--once"], host=host) == 0
    (config.parent / "specs" / "gone.toml").unlink()
    capsys.readouterr()
    assert main(["-c", str(config), "plan", "--json"], host=host) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out) == {"schema_version": 1, "pool": "planpool", "actions": [
        {"name": "gone", "action": "remove",
         "summary": "remove: deactivate, then delete its thin id"},
        {"name": "keep", "action": "none", "summary": "nothing"},
    ]}


@pytest.mark.parametrize("ran_before", [True, False], ids=["with a store", "without"])
def test_plan_without_device_mapper_prints_one_line(config: Path, ran_before: bool,
                                                    capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    """No device-mapper on this machine: one line that says so, exit 1, no traceback;
    with or without a store, and nothing created."""
    _write_config(config, dm_driver="dmsetup")
    if ran_before:
        assert main(["-c", str(config), "run", "--once"], host=FakeKernel()) == 0
    capsys.readouterr()
    assert main(["-c", str(config), "plan"], host=_NoDeviceMapper()) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "reconciler: cannot plan: device-mapper cannot be read here "
        "(info planpool: dmsetup: command not found)"]
    assert (config.parent / "state").exists() is ran_before


@pytest.mark.parametrize("open_elsewhere", [False, True], ids=["alone", "beside a writer"])
def test_a_read_only_store_refuses_every_write(config: Path, open_elsewhere: bool) -> None:
    """The store `plan` opens cannot write, whether it opened the file immutable (nobody
    else had it open) or read-only beside a writer: SQLite refuses, nothing is queued."""
    assert main(["-c", str(config), "run", "--once"], host=FakeKernel()) == 0
    database = config.parent / "state" / "reconciler.db"
    writer = sqlite3.connect(database) if open_elsewhere else None
    if writer is not None:
        writer.execute("SELECT COUNT(*) FROM devices").fetchone()  # opens its -wal
    try:
        store = Store(database, time.time, readonly=True)
        try:
            with pytest.raises(peewee.OperationalError, match="readonly database"):
                store.add_request(RequestKind.RETRY, "keep", None)
            assert store.device("keep") is not None
        finally:
            store.close()
        check = sqlite3.connect(database)
        assert check.execute("SELECT COUNT(*) FROM requests").fetchone() == (0,)
        check.close()
    finally:
        if writer is not None:
            writer.close()


def test_plan_on_an_unreadable_database_prints_one_line(config: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """A database file plan cannot read (here: not a database at all) is one line, exit 1,
    and the file is left as it was."""
    state = config.parent / "state"
    state.mkdir()
    (state / "reconciler.db").write_bytes(b"not a database\n" * 100)
    assert main(["-c", str(config), "plan"], host=FakeKernel()) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"reconciler: {state / 'reconciler.db'} is not a SQLite database (file is not a "
        "database): restore it from a backup, or move it away to start afresh"]
    assert (state / "reconciler.db").read_bytes() == b"not a database\n" * 100
    assert sorted(p.name for p in state.iterdir()) == ["reconciler.db"]
