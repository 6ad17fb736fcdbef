"""Absence is not deletion: a spec entry or a spec directory that cannot be read keeps its
devices, with the reason in `status`; and the removal guard holds mass removals."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import main
from reconciler.config import load_settings
from reconciler.daemon.service import Daemon
from reconciler.daemon.wakeups import Wakeups
from reconciler.reconcile.pass_context import PassResult
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import World

NONE = 'filesystem = "none"\nsize = "4MiB"\n'
PAYLOAD = b"reconciler keeps this\n" * 100


@contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _socket_at(path: Path) -> None:
    # Bound by a relative name: a unix socket's path holds at most 107 bytes.
    with _cwd(path.parent):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path.name)
        sock.close()


def _replace(path: Path, make: Callable[[Path], object]) -> None:
    path.unlink()
    make(path)


# Each turns an existing, valid spec file into something that is there but is not a
# readable regular TOML file of a spec.
BROKEN_FORMS: dict[str, Callable[[Path], object]] = {
    "dangling symlink": lambda p: _replace(p, lambda q: q.symlink_to(q.parent / "gone.x")),
    "symlink loop": lambda p: _replace(p, lambda q: q.symlink_to(q.name)),
    "symlink to /dev/null": lambda p: _replace(p, lambda q: q.symlink_to("/dev/null")),
    "directory": lambda p: _replace(p, lambda q: q.mkdir()),
    "fifo": lambda p: _replace(p, lambda q: os.mkfifo(q)),
    "socket": lambda p: _replace(p, _socket_at),
    "larger than 1MiB": lambda p: p.write_bytes(b"# " + b"x" * (2 << 20) + b"\n"),
    "not UTF-8": lambda p: p.write_bytes(b'filesystem = "\xff\xfe"\n'),
    "TOML nested 500 deep": lambda p: p.write_text("a = " + "[" * 500 + "]" * 500 + "\n"),
    "a typo": lambda p: p.write_text('filesytem = "none"\n'),
    "size of 2^63 bytes": lambda p: p.write_text(f'filesystem = "none"\nsize = {1 << 63}\n'),
}


def _device(world: World, name: str) -> tuple[str, int | None]:
    assert world.store is not None
    record = world.store.device(name)
    assert record is not None, f"{name} has no record"
    return record.state, record.device_id


def _kept(world: World, name: str, thin_id: int | None) -> None:
    """The device is still there: same state, same thin id, mapped, its data intact."""
    assert _device(world, name) == ("Activated", thin_id)
    kname = f"{world.pool}-{name}"
    assert kname in world.kernel_names()
    assert world.host.read(f"/dev/mapper/{kname}", 1 << 20, len(PAYLOAD)) == PAYLOAD


def _two_devices(world: World) -> dict[str, int | None]:
    world.spec("a", NONE)
    world.spec("b", NONE)
    assert world.run_pass().ok
    for name in ("a", "b"):
        world.host.write(f"/dev/mapper/{world.pool}-{name}", 1 << 20, PAYLOAD)
    return {name: _device(world, name)[1] for name in ("a", "b")}


@pytest.mark.parametrize("form", sorted(BROKEN_FORMS))
def test_a_spec_turned_into_a_broken_entry_keeps_its_device(world: World, form: str) -> None:
    """After a partial pass, a full pass and a restart, a spec that became a dangling link,
    a directory, a FIFO, ... still has its device (id and data), and status names it."""
    ids = _two_devices(world)
    BROKEN_FORMS[form](world.settings.specs_path / "a.toml")

    first = world.reconciler()
    partial = first.run_pass(only={"a"})
    assert "a" not in partial.removed and not partial.ok
    _kept(world, "a", ids["a"])
    full = first.run_pass()
    assert [r.name for r in full.rejected] == ["a"]
    _kept(world, "a", ids["a"])
    restarted = world.run_pass()  # a new Reconciler: what a restart reads
    assert [r.name for r in restarted.rejected] == ["a"]
    _kept(world, "a", ids["a"])
    _kept(world, "b", ids["b"])
    rejected = world.report()["rejected_specs"]
    assert [r["name"] for r in rejected] == ["a"] and rejected[0]["error"]


def _spec_dir_gone(path: Path, tmp: Path) -> None:
    shutil.rmtree(path)


def _spec_dir_a_file(path: Path, tmp: Path) -> None:
    shutil.rmtree(path)
    path.write_text("not a directory\n")


def _spec_dir_dangling(path: Path, tmp: Path) -> None:
    shutil.rmtree(path)
    path.symlink_to(tmp / "never-made")


def _spec_dir_unmounted(path: Path, tmp: Path) -> None:
    # What an unmounted mount point looks like: the same path, empty, on the filesystem
    # below (another st_dev). /dev/shm is a tmpfs of its own here.
    elsewhere = Path("/dev/shm")
    if not elsewhere.is_dir() or os.stat(elsewhere).st_dev == os.stat(path).st_dev:
        pytest.skip("needs a directory on another filesystem than the test's")
    shutil.move(str(path), str(tmp / "mounted"))
    empty = Path(os.path.realpath(elsewhere)) / f"reconciler-test-{os.getpid()}-{tmp.name}"
    empty.mkdir()
    path.symlink_to(empty)


SPEC_DIR_FORMS = {
    "deleted": _spec_dir_gone,
    "a regular file": _spec_dir_a_file,
    "a dangling symlink": _spec_dir_dangling,
    "an empty mount point (unmounted)": _spec_dir_unmounted,
}


@pytest.mark.parametrize("form", sorted(SPEC_DIR_FORMS))
def test_a_broken_spec_dir_removes_nothing(fake_world: World, tmp_path: Path,
                                           form: str) -> None:
    """A spec_dir that is gone, a file, a dangling link or an unmounted mount point is a
    source error: every device stays, status says why, and the pass is not ok."""
    ids = _two_devices(fake_world)
    SPEC_DIR_FORMS[form](fake_world.settings.specs_path, tmp_path)
    for result in (fake_world.reconciler().run_pass(), fake_world.run_pass()):
        assert result.source_error is not None and not result.ok
        assert result.removed == []
        _kept(fake_world, "a", ids["a"])
        _kept(fake_world, "b", ids["b"])
    pool = fake_world.report()["pool"]
    assert pool["spec_source_error"] is not None and "spec_dir" in pool["spec_source_error"]


def test_a_remounted_spec_dir_converges_with_the_same_ids(fake_world: World,
                                                          tmp_path: Path) -> None:
    """Once the files are back (the mount returns), the source error clears and nothing was
    made again: the same thin ids."""
    ids = _two_devices(fake_world)
    specs = fake_world.settings.specs_path
    _spec_dir_unmounted(specs, tmp_path)
    assert fake_world.run_pass().source_error is not None
    specs.unlink()
    shutil.move(str(tmp_path / "mounted"), str(specs))
    assert fake_world.run_pass().ok
    assert {n: _device(fake_world, n)[1] for n in ids} == ids
    assert fake_world.report()["pool"]["spec_source_error"] is None


def _devices(world: World, count: int) -> None:
    for i in range(count):
        world.spec(f"d{i:02}", NONE)
    assert world.run_pass().ok


def _config(world: World, tmp_path: Path, **extra: object) -> Path:
    settings = world.settings
    return write_config(tmp_path / "config.toml", root_path=settings.root_path,
                        pool_name=settings.pool_name, dm_driver=settings.dm_driver,
                        loopback_data_size="256MiB", loopback_metadata_size="8MiB",
                        base_image_size="64MiB", **extra)


def _live(world: World) -> set[str]:
    assert world.store is not None
    return {r.name for r in world.store.devices()}


def test_nine_deletions_at_once_are_held_until_confirmed(
    fake_world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the default max_removals (8), deleting 9 of 12 spec files removes nothing: the
    removals are held (status and the exit code say so) until `confirm-removals`."""
    _devices(fake_world, 12)
    for i in range(9):
        fake_world.unspec(f"d{i:02}")
    result = fake_world.run_pass()
    assert sorted(result.held) == [f"d{i:02}" for i in range(9)] and not result.ok
    assert result.removed == [] and len(_live(fake_world)) == 12
    report: dict[str, Any] = fake_world.report()
    assert report["pool"]["removals_held"] == [f"d{i:02}" for i in range(9)]
    assert "9 removals held" in report["conditions"][0]["message"]

    assert fake_world.store is not None
    fake_world.store.close()
    config = _config(fake_world, tmp_path)
    assert main(["-c", str(config), "run", "--once"], host=fake_world.host) == 1
    assert "9 removals held" in capsys.readouterr().err
    assert main(["-c", str(config), "confirm-removals", "--all"], host=fake_world.host) == 0
    fake_world.store = Store(fake_world.settings.database_path, fake_world.clock)
    assert _live(fake_world) == {"d09", "d10", "d11"}
    assert fake_world.kernel_names() == {f"{fake_world.pool}-d{i:02}" for i in (9, 10, 11)}
    assert fake_world.report()["pool"]["removals_held"] == []


def test_eight_deletions_are_done(fake_world: World) -> None:
    """At the limit (8 of 12) the removals are made: the guard is for more than that."""
    _devices(fake_world, 12)
    for i in range(8):
        fake_world.unspec(f"d{i:02}")
    result = fake_world.run_pass()
    assert result.ok and len(result.removed) == 8
    assert _live(fake_world) == {f"d{i:02}" for i in range(8, 12)}


def test_deleting_every_spec_file_is_held_even_for_two(fake_world: World) -> None:
    """Every spec-file device going at once (two or more) looks like a wrong spec_dir or a
    lost mount: held, whatever max_removals says."""
    _devices(fake_world, 2)
    for i in range(2):
        fake_world.unspec(f"d{i:02}")
    result = fake_world.run_pass()
    assert sorted(result.held) == ["d00", "d01"] and _live(fake_world) == {"d00", "d01"}


def test_allow_removals_lets_a_run_remove_everything(fake_world: World,
                                                     tmp_path: Path) -> None:
    """`run --once --allow-removals` is the explicit way to remove many at once."""
    _devices(fake_world, 10)
    for i in range(10):
        fake_world.unspec(f"d{i:02}")
    assert fake_world.store is not None
    fake_world.store.close()
    config = _config(fake_world, tmp_path)
    assert main(["-c", str(config), "run", "--once", "--allow-removals"],
                host=fake_world.host) == 0
    fake_world.store = Store(fake_world.settings.database_path, fake_world.clock)
    assert _live(fake_world) == set()


def test_max_removals_unlimited_still_holds_losing_everything(fake_world: World,
                                                              tmp_path: Path) -> None:
    """max_removals = "unlimited" lifts the count, not the every-device rule."""
    _devices(fake_world, 12)
    fake_world.settings = load_settings(_config(fake_world, tmp_path,
                                                max_removals="unlimited"))
    for i in range(11):
        fake_world.unspec(f"d{i:02}")
    assert len(fake_world.run_pass().removed) == 11
    _devices(fake_world, 3)
    for i in range(3):
        fake_world.unspec(f"d{i:02}")
    fake_world.unspec("d11")
    assert sorted(fake_world.run_pass().held) == ["d00", "d01", "d02", "d11"]


def test_the_snapshotters_removals_are_never_held(fake_world: World) -> None:
    """containerd's Remove calls are explicit: its garbage collector removes many at once."""
    snaps = snapshotter_over(fake_world.reconciler(), sleep=fake_world.clock.sleep)
    for i in range(12):
        snaps.prepare(f"default/{i}/k")
    for i in range(12):
        snaps.remove(f"default/{i}/k")
    assert fake_world.store is not None
    assert [d.name for d in fake_world.store.devices()] == ["snap-base-1"], "roots' base stays"
    assert fake_world.run_pass().held == []


def test_a_name_ending_in_a_newline_is_refused(fake_world: World) -> None:
    """`$` matches before a final newline; names are matched whole, so "x\\n" is refused."""
    (fake_world.settings.specs_path / "x\n.toml").write_text(NONE)
    result = fake_world.run_pass()
    assert [r.name for r in result.rejected] == ["x\n"]
    assert fake_world.kernel_names() == set()
    assert fake_world.run_pass().rejected, "and the next pass still parses the kernel"


def _report_names(result: PassResult) -> list[str]:
    return sorted(r.name for r in result.rejected)


def test_a_parent_chain_2000_deep_is_resolved_without_recursion(fake_world: World) -> None:
    """A 2,000-long chain of snapshots whose root is broken: every link is rejected as the
    child of an invalid parent, and the pass completes."""
    fake_world.spec("c0000", "size = 'huge'\n")
    for i in range(1, 2000):
        fake_world.spec(f"c{i:04}", f'parent = "c{i - 1:04}"\n')
    result = fake_world.run_pass()
    assert len(result.rejected) == 2000
    assert "parent 'c1998' is invalid" in {r.name: r.error for r in result.rejected}["c1999"]


def test_a_reload_to_a_typod_spec_dir_removes_nothing(fake_world: World,
                                                      tmp_path: Path) -> None:
    """SIGHUP with a typo in spec_dir: the typo'd directory is not made, the pass sees a
    source error and removes nothing; reloading the right path clears it, same ids."""
    ids = _two_devices(fake_world)
    right = fake_world.settings.specs_path
    config = _config(fake_world, tmp_path, spec_dir=str(right))
    assert fake_world.store is not None
    fake_world.store.close()
    daemon = Daemon(load_settings(config), fake_world.host, config_path=config,
                    clock=fake_world.clock, wakeups=Wakeups(settle=0.01))
    fake_world.store = Store(fake_world.settings.database_path, fake_world.clock)
    typo = tmp_path / "spces"
    try:
        daemon.start()
        _config(fake_world, tmp_path, spec_dir=str(typo))
        daemon.wakeups.reload()
        assert daemon.step(timeout=0)
        assert daemon.settings.specs_path == typo and not typo.exists()
        assert "does not exist" in fake_world.report()["pool"]["spec_source_error"]
        _kept(fake_world, "a", ids["a"])
        _kept(fake_world, "b", ids["b"])
        _config(fake_world, tmp_path, spec_dir=str(right))
        daemon.wakeups.reload()
        assert daemon.step(timeout=0)
        assert fake_world.report()["pool"]["spec_source_error"] is None
        assert {n: _device(fake_world, n)[1] for n in ids} == ids
    finally:
        daemon.close()


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777, 0o1777])
def test_a_spec_dir_others_may_write_to_is_a_source_error(fake_world: World, mode: int) -> None:
    """A spec_dir writable by its group or everyone (sticky or not) is a source error: a
    spec file deleted meanwhile removes nothing, every device stays, status says why."""
    ids = _two_devices(fake_world)
    specs = fake_world.settings.specs_path
    specs.chmod(mode)
    fake_world.unspec("b")
    partial = fake_world.reconciler().run_pass(only={"b"})
    assert partial.source_error is not None and partial.removed == []
    result = fake_world.run_pass()
    assert result.source_error is not None and "writable by" in result.source_error
    assert result.removed == [] and not result.ok
    _kept(fake_world, "a", ids["a"])
    _kept(fake_world, "b", ids["b"])
    pool = fake_world.report()["pool"]
    assert pool["spec_source_error"] is not None
    assert f"mode {mode:04o}" in pool["spec_source_error"]


def test_a_spec_dir_owned_by_another_user_is_a_source_error(fake_world: World) -> None:
    """A spec_dir owned by another user (who could delete specs) removes nothing."""
    ids = _two_devices(fake_world)
    os.chown(fake_world.settings.specs_path, 12345, 12345)
    fake_world.unspec("b")
    result = fake_world.run_pass()
    assert result.source_error is not None and "owned by uid 12345" in result.source_error
    assert result.removed == []
    _kept(fake_world, "b", ids["b"])


def test_a_spec_file_of_another_user_is_rejected_and_its_device_kept(fake_world: World) -> None:
    """A spec file chowned to another user is a rejected spec naming the owner: its device
    stays as it was (the change it asks for is not made), and a new one is not made."""
    ids = _two_devices(fake_world)
    os.chown(fake_world.spec("a", 'filesystem = "none"\nsize = "8MiB"\n'), 12345, 12345)
    os.chown(fake_world.spec("c", NONE), 12345, 12345)
    partial = fake_world.reconciler().run_pass(only={"a", "c"})
    assert sorted(r.name for r in partial.rejected) == ["a", "c"]
    for result in (fake_world.reconciler().run_pass(), fake_world.run_pass()):
        errors = {r.name: r.error for r in result.rejected}
        assert sorted(errors) == ["a", "c"] and "owned by uid 12345" in errors["a"]
        assert result.removed == [] and not result.ok
        _kept(fake_world, "a", ids["a"])
        _kept(fake_world, "b", ids["b"])
    assert fake_world.store is not None
    record = fake_world.store.device("a")
    assert record is not None and record.size_bytes == 4 << 20
    assert fake_world.store.device("c") is None
    assert f"{fake_world.pool}-c" not in fake_world.kernel_names()
    rejected = fake_world.report()["rejected_specs"]
    assert [r["name"] for r in rejected] == ["a", "c"]
    assert "allow_foreign_specs" in rejected[0]["error"]


def test_allow_foreign_specs_accepts_other_users_files_and_an_open_spec_dir(
    fake_world: World
) -> None:
    """With allow_foreign_specs a world-writable spec_dir and another user's spec file are
    read like any other: the file's device is made, and a deletion removes its device."""
    ids = _two_devices(fake_world)
    fake_world.settings = replace(fake_world.settings, allow_foreign_specs=True)
    fake_world.settings.specs_path.chmod(0o777)
    os.chown(fake_world.spec("c", NONE), 12345, 12345)
    fake_world.unspec("b")
    result = fake_world.run_pass()
    assert result.ok and result.source_error is None and result.rejected == []
    assert result.removed == ["b"]
    assert _device(fake_world, "c")[0] == "Activated"
    _kept(fake_world, "a", ids["a"])


def test_plan_remembers_nothing_about_the_spec_dir(fake_world: World) -> None:
    """plan writes nothing: not even the spec directory's filesystem (a fact a pass keeps)."""
    _two_devices(fake_world)
    assert fake_world.store is not None
    key = f"spec_dir_device:{fake_world.settings.specs_path}"
    before = fake_world.store.fact(key)
    fake_world.store.set_fact(key, "123456")  # as if it had last held specs elsewhere
    fake_world.reconciler().plan()
    assert fake_world.store.fact(key) == "123456"
    assert before is not None
