"""A spec_dir that is a mounted Kubernetes ConfigMap: kubelet's AtomicWriter swaps `..data`
under a running daemon, and that is one pass applying the new content; its `..` entries are
never specs; a read-only mount is not an open directory; broken links keep their devices."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from watchdog.events import FileCreatedEvent, FileDeletedEvent, FileMovedEvent

from reconciler.daemon.service import Daemon
from reconciler.daemon.wakeups import Wakeups
from reconciler.daemon.watch import _Handler
from reconciler.specs import Defaults, load_spec_dir, read_only_mount
from reconciler.store import ConditionKind, Store
from reconciler.testing.configmap import DATA, atomic_write
from reconciler.testing.world import World
from reconciler.units import Bytes
from reconciler.vocabulary import Filesystem

MIB = 1 << 20


def _spec(size_mib: int) -> str:
    return f'filesystem = "none"\nsize = "{size_mib}MiB"\n'


def _devices(world: World) -> dict[str, tuple[str, int]]:
    """Every device's state and size as a separate reader (like `status`) sees them."""
    store = Store(world.settings.database_path, world.clock)
    try:
        return {d.name: (d.state, d.size_bytes) for d in store.devices(include_removed=True)}
    finally:
        store.close()


def _rejected(world: World) -> list[str]:
    store = Store(world.settings.database_path, world.clock)
    try:
        return [r.name for r in store.rejected_specs()]
    finally:
        store.close()


def _wait_for_names(daemon: Daemon, count: int, timeout: float = 10.0) -> None:
    """Until the watcher's thread has queued `count` names (watchdog delivers on its own)."""
    deadline = time.monotonic() + timeout
    while daemon.wakeups.pending() < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert daemon.wakeups.pending() >= count


def _one_pass(daemon: Daemon, names: int) -> None:
    """The update arrives as one batch and is one pass; nothing else wakes the daemon."""
    before = daemon.passes
    _wait_for_names(daemon, names)
    assert daemon.step(timeout=5)
    assert daemon.passes == before + 1
    assert daemon.step(timeout=0.3)
    assert daemon.passes == before + 1, "the update woke the daemon a second time"


def test_a_configmap_update_is_one_pass_applying_changed_added_and_removed_keys(
        fake_world: World, daemon: Daemon) -> None:
    """kubelet's AtomicWriter sequence under a running daemon: the first payload and each
    update are one pass each; a changed key's device grows (its link never changed, only
    `..data`), an added key's device is made, a removed key's device is removed; the `..`
    entries are neither devices nor rejected specs."""
    specs = fake_world.settings.specs_path
    atomic_write(specs, {"a.toml": _spec(4), "b.toml": _spec(4), "c.toml": _spec(4)},
                 "2026_12_01_02_03_04")
    _one_pass(daemon, names=3)
    assert _devices(fake_world) == dict.fromkeys("abc", ("Activated", 4 * MIB))

    first = os.readlink(specs / DATA)
    atomic_write(specs, {"a.toml": _spec(8), "b.toml": _spec(4), "d.toml": _spec(4)},
                 "2026_12_01_02_05_00")
    assert not (specs / first).exists() and not (specs / "c.toml").exists()
    _one_pass(daemon, names=2)  # d.toml made, c.toml deleted; a.toml's link untouched
    devices = _devices(fake_world)
    assert devices["a"] == ("Resumed", 8 * MIB)  # grown: suspended, reloaded, resumed
    assert devices["b"] == ("Activated", 4 * MIB)
    assert devices["d"] == ("Activated", 4 * MIB)
    assert devices["c"][0] == "Removed"
    assert fake_world.kernel_names() == {f"{fake_world.pool}-{n}" for n in "abd"}
    assert _rejected(fake_world) == []
    assert all(not n.startswith(".") for n in _devices(fake_world))


def test_a_configmap_emptied_of_every_key_is_held_by_the_removal_guard(
        fake_world: World, daemon: Daemon) -> None:
    """An update removing every key is a mass removal like `rm *`: held, the devices stay,
    and status says so, until an operator confirms."""
    specs = fake_world.settings.specs_path
    atomic_write(specs, {"a.toml": _spec(4), "b.toml": _spec(4)}, "2026_12_01_02_03_04")
    _one_pass(daemon, names=2)
    atomic_write(specs, {}, "2026_12_01_02_05_00")
    _one_pass(daemon, names=2)
    assert _devices(fake_world) == dict.fromkeys("ab", ("Activated", 4 * MIB))
    assert fake_world.kernel_names() == {f"{fake_world.pool}-{n}" for n in "ab"}
    store = Store(fake_world.settings.database_path, fake_world.clock)
    try:
        held = store.condition(ConditionKind.REMOVALS_HELD)
    finally:
        store.close()
    assert held is not None and set(held.names) == {"a", "b"}


def test_a_dangling_data_link_keeps_every_device(fake_world: World) -> None:
    """`..data` leading nowhere (its timestamped directory gone) leaves every key's link
    dangling: each is a rejected spec and its device is kept, nothing is removed."""
    specs = fake_world.settings.specs_path
    made = atomic_write(specs, {"a.toml": _spec(4), "b.toml": _spec(4)})
    fake_world.run_pass()
    shutil.rmtree(made)
    result = fake_world.run_pass()
    assert result.removed == []
    assert sorted(r.name for r in result.rejected) == ["a", "b"]
    assert all("dangling" in r.error for r in result.rejected)
    assert _devices(fake_world) == dict.fromkeys("ab", ("Activated", 4 * MIB))


def test_an_unreadable_configmap_key_keeps_its_device(fake_world: World) -> None:
    """A key whose file became something other than a regular file (here a directory in
    the timestamped directory) is a rejected spec; its device stays."""
    specs = fake_world.settings.specs_path
    made = atomic_write(specs, {"a.toml": _spec(4), "b.toml": _spec(4)})
    fake_world.run_pass()
    (made / "b.toml").unlink()
    (made / "b.toml").mkdir()
    result = fake_world.run_pass()
    assert result.removed == [] and [r.name for r in result.rejected] == ["b"]
    assert _devices(fake_world)["b"] == ("Activated", 4 * MIB)


def test_the_dot_dot_entries_are_not_specs(tmp_path: Path) -> None:
    """`..data`, `..data_tmp`, the timestamped directories, even one named like a spec,
    are neither specs nor rejected specs."""
    specs = tmp_path / "specs"
    specs.mkdir()
    atomic_write(specs, {"a.toml": _spec(4)})
    os.symlink("..data", specs / "..data_tmp")
    (specs / "..2026_12_01_02_03_04.1.toml").mkdir()
    found = load_spec_dir(specs, Defaults(size=Bytes(4 * MIB), filesystem=Filesystem.NONE))
    assert set(found.specs) == {"a"} and found.rejected == () and found.source_error is None


def _statvfs_read_only(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """The kernel's answer for `directory`'s mount: read-only (ST_RDONLY), as for a
    ConfigMap volume; every other path's as it is. Mounting needs root, which the unit
    tier does not have; tests/kernel/test_kernel_configmap.py mounts for real."""
    real = os.statvfs

    def statvfs(path: Any) -> Any:
        found = real(path)
        if Path(path) != directory:
            return found
        fields = list(found)
        fields[8] |= os.ST_RDONLY  # f_flag
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "statvfs", statvfs)


def test_a_world_writable_spec_dir_on_a_read_only_mount_is_trusted(
        fake_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ConfigMap volume's directory may be 0777, but on a read-only mount nobody can add
    or delete a spec through it: no source error, and a removed key removes its device."""
    specs = fake_world.settings.specs_path
    atomic_write(specs, {"a.toml": _spec(4), "b.toml": _spec(4)})
    specs.chmod(0o777)
    assert fake_world.run_pass().source_error is not None, "writable: refused"
    _statvfs_read_only(monkeypatch, specs)
    assert read_only_mount(specs)
    assert fake_world.run_pass().source_error is None
    atomic_write(specs, {"a.toml": _spec(4)}, "2026_12_01_02_05_00")
    result = fake_world.run_pass()
    assert result.source_error is None and result.removed == ["b"]


def test_the_owner_still_counts_on_a_read_only_mount(
        fake_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-only answers "who can write it now", not "whose orders are these": a spec_dir
    owned by another user is a source error on a read-only mount too."""
    specs = fake_world.settings.specs_path
    atomic_write(specs, {"a.toml": _spec(4)})
    os.chown(specs, 12345, 12345)
    _statvfs_read_only(monkeypatch, specs)
    result = fake_world.run_pass()
    assert result.source_error is not None and "owned by uid 12345" in result.source_error


def test_a_rename_onto_data_asks_for_a_full_read_after_settling(tmp_path: Path) -> None:
    """The watcher turns kubelet's rename of `..data_tmp` over `..data` into a full read
    (rescan), and the wake-up waits for the burst to settle like file events do: the key
    links kubelet adds and removes right after it arrive in the same batch."""
    wakeups = Wakeups(settle=0.2, max_settle=5.0)
    handler = _Handler(tmp_path, wakeups)
    handler.on_any_event(FileCreatedEvent(str(tmp_path / "..data_tmp")))
    assert wakeups.take(0).empty, "..data_tmp is not a spec"
    handler.on_any_event(FileMovedEvent(str(tmp_path / "..data_tmp"), str(tmp_path / DATA)))
    late = threading.Timer(0.05, lambda: handler.on_any_event(
        FileDeletedEvent(str(tmp_path / "gone.toml"))))
    late.start()
    batch = wakeups.take(1)
    late.join()
    assert batch.rescan and batch.names == {"gone"}
    handler.on_any_event(FileMovedEvent(str(tmp_path / "x" / "..data_tmp"),
                                        str(tmp_path / "x" / DATA)))
    assert wakeups.take(0).empty, "a ..data elsewhere is not this directory's"
