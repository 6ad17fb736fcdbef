"""The snapshotter API (containerd's contract) over the reconciler, on the fake kernel and,
for the data path, on the real one."""

from __future__ import annotations

import errno
import os

import pytest

from reconciler.dm.client import DmClient
from reconciler.snapshots import (
    AlreadyExists,
    FailedPrecondition,
    Info,
    InvalidArgument,
    Kind,
    NotFound,
    Snapshotter,
    Unavailable,
)
from reconciler.specs import Defaults, SpecError, parse_spec
from reconciler.store import SnapshotRecord, Store
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import World, make_settings
from reconciler.units import Bytes
from reconciler.vocabulary import Filesystem


def held_ids(store: Store | None) -> set[int]:
    """Thin ids held by devices that are not Removed (a Faulty one's stays quarantined)."""
    assert store is not None
    return {r.device_id for r in store.devices() if r.device_id is not None}


def snapshotter(world: World) -> Snapshotter:
    return snapshotter_over(world.reconciler(), sleep=world.clock.sleep)


def write(world: World, device: str, offset: int, data: bytes) -> None:
    world.host.write(device, offset, data)


def test_prepare_commit_child_keeps_data_apart(world: World) -> None:
    """A file written in an active snapshot and committed is in a child prepared from it, and
    the child's writes never reach the parent; kernel devices are named from ids, not keys."""
    snaps = snapshotter(world)
    mounts = snaps.prepare("default/1/base")
    assert len(mounts) == 1 and mounts[0].type == "ext4" and mounts[0].options == ("rw",)
    base_dev = mounts[0].source
    assert base_dev == f"/dev/mapper/{world.pool}-snap-1"
    payload = os.urandom(4096)
    world.host.write(base_dev, 8 << 20, payload)
    snaps.commit("layer-1", "default/1/base", labels={"containerd.io/snapshot/x": "y"})
    info = snaps.stat("layer-1")
    assert info.kind == Kind.COMMITTED and info.labels == {"containerd.io/snapshot/x": "y"}
    with pytest.raises(NotFound):
        snaps.stat("default/1/base")
    assert world.kernel_names() == set(), "a committed snapshot rests deactivated"

    child = snaps.prepare("default/2/work", "layer-1")[0].source
    assert world.host.read(child, 8 << 20, 4096) == payload
    world.host.write(child, 8 << 20, b"\x00" * 4096)
    view = snaps.view("default/3/look", "layer-1")[0]
    assert view.options == ("ro",)
    assert world.host.read(view.source, 8 << 20, 4096) == payload, "parent unchanged"

    with pytest.raises(FailedPrecondition):
        snaps.remove("layer-1")
    snaps.remove("default/3/look")
    snaps.remove("default/2/work")
    snaps.remove("layer-1")
    assert snaps.walk() == []
    assert world.kernel_names() == set()
    assert world.store is not None
    (base,) = world.store.bases()
    base_device = world.store.device(base.name)
    assert base_device is not None
    assert held_ids(world.store) == {base_device.device_id}, "only the base's id stays"


def test_errors_are_containerd_kinds(fake_world: World) -> None:
    """Unknown keys are NotFound, taken keys AlreadyExists, a non-committed parent and an
    empty key InvalidArgument, committing a view FailedPrecondition."""
    snaps = snapshotter(fake_world)
    with pytest.raises(NotFound):
        snaps.stat("nope")
    with pytest.raises(NotFound):
        snaps.prepare("a", "missing-parent")
    with pytest.raises(InvalidArgument):
        snaps.prepare("")
    snaps.prepare("a")
    with pytest.raises(AlreadyExists):
        snaps.prepare("a")
    with pytest.raises(InvalidArgument, match="not a committed snapshot"):
        snaps.prepare("b", "a")
    snaps.view("v")
    with pytest.raises(FailedPrecondition):
        snaps.commit("c", "v")
    snaps.commit("c", "a")
    with pytest.raises(AlreadyExists):
        snaps.prepare("c")
    snaps.prepare("d")
    with pytest.raises(AlreadyExists):
        snaps.commit("c", "d")
    with pytest.raises(NotFound):
        snaps.remove("a")
    with pytest.raises(InvalidArgument, match="only labels"):
        snaps.update(Info(name="c", kind=Kind.COMMITTED), ["parent"])


def test_update_labels_by_field_path(fake_world: World) -> None:
    """No paths replace all labels; labels.<k> sets or deletes one; labels are kept."""
    snaps = snapshotter(fake_world)
    snaps.prepare("k", labels={"a": "1", "b": "2"})
    info = snaps.update(Info(name="k", kind=Kind.ACTIVE, labels={"a": "9", "c": "3"}),
                        ["labels.a", "labels.b"])
    assert info.labels == {"a": "9"}
    info = snaps.update(Info(name="k", kind=Kind.ACTIVE, labels={"z": "0"}))
    assert info.labels == {"z": "0"}
    assert snapshotter(fake_world).stat("k").labels == {"z": "0"}
    assert info.updated_at >= info.created_at


def test_walk_filters(fake_world: World) -> None:
    """Walk takes containerd's filters: fields, labels, operators, OR between filters."""
    snaps = snapshotter(fake_world)
    snaps.prepare("base", labels={"containerd.io/gc.root": "x", "tier": "gold"})
    snaps.commit("sha256:1", "base", labels={"tier": "gold"})
    snaps.prepare("w1", "sha256:1", labels={"tier": "silver"})
    snaps.view("v1", "sha256:1")

    def names(*filters: str) -> list[str]:
        return sorted(i.name for i in snaps.walk(filters))

    assert names() == ["sha256:1", "v1", "w1"]
    assert names("kind==committed") == ["sha256:1"]
    assert names("parent==sha256:1,kind!=view") == ["w1"]
    assert names('labels."tier"==gold', "name==v1") == ["sha256:1", "v1"]
    assert names("labels.tier") == ["sha256:1", "w1"]
    assert names("name~=^w[0-9]$") == ["w1"]
    assert names("name~=/^s.*/") == ["sha256:1"]
    assert names("name@=256") == ["sha256:1"]
    with pytest.raises(InvalidArgument):
        snaps.walk(["name=="])
    with pytest.raises(InvalidArgument):
        snaps.walk(["name~=("])


def test_usage_excludes_the_parent(fake_world: World) -> None:
    """Usage counts what a snapshot wrote beyond its parent; a committed one's is fixed."""
    snaps = snapshotter(fake_world)
    dev = snaps.prepare("base")[0].source
    fake_world.host.write(dev, 16 << 20, os.urandom(1 << 20))
    active = snaps.usage("base")
    assert active.size >= 1 << 20
    assert active.inodes == 11, "a new ext4 uses its first 11 inodes"
    snaps.commit("layer", "base")
    assert snaps.usage("layer") == active
    child = snaps.prepare("child", "layer")[0].source
    assert snaps.usage("child").size == 0
    fake_world.host.write(child, 40 << 20, os.urandom(256 << 10))
    assert snaps.usage("child").size == 256 << 10
    assert snaps.usage("child").inodes == 0
    assert snaps.usage("layer") == active, "the child shares the layer's blocks: fixed before"


def _thin_ls_runs(world: World) -> int:
    fake = world.host
    assert isinstance(fake, FakeKernel)
    return sum(1 for call in fake.calls if call[0] == "thin_ls")


def _written_roots(world: World, snaps: Snapshotter, sizes: dict[str, int]) -> None:
    """Roots prepared and written, `sizes[key]` bytes each, then unmounted: containerd's
    unpack of one layer each."""
    for key, size in sizes.items():
        device = snaps.prepare(key)[0].source
        world.host.write(device, 16 << 20, os.urandom(size))


def test_commits_run_no_thin_ls_and_the_first_usage_measures_them_all(
        fake_world: World) -> None:
    """N Commits run no thin_ls: nothing asked for their usage. The first Usage of a committed
    one measures all N in one thin_ls and stores them; the others are then read from the
    store, each the bytes its layer wrote."""
    snaps = snapshotter(fake_world)
    sizes = {f"unpack-{i}": (i + 1) << 20 for i in range(4)}
    _written_roots(fake_world, snaps, sizes)
    before = _thin_ls_runs(fake_world)
    for key in sizes:
        snaps.commit(f"layer-{key}", key)
    assert _thin_ls_runs(fake_world) == before, "Commit runs no thin_ls"
    assert fake_world.store is not None
    assert len(fake_world.store.unmeasured_snapshots()) == len(sizes)

    usages = {key: snaps.usage(f"layer-{key}") for key in sizes}
    assert _thin_ls_runs(fake_world) == before + 1, "one thin_ls for every unmeasured layer"
    assert fake_world.store.unmeasured_snapshots() == []
    # The fake's mkfs maps a few scattered blocks; a root's writes are all its own, whole
    # data blocks (64 KiB) over the range written.
    assert {key: usage.size for key, usage in usages.items()} == sizes
    # Read at Commit, in-process: a root's count from zero (ext4's own first 11).
    assert all(usage.inodes == 11 for usage in usages.values())
    assert snaps.usage(f"layer-{next(iter(sizes))}") == next(iter(usages.values()))
    assert _thin_ls_runs(fake_world) == before + 1, "a measured layer is read from the store"


def test_a_child_of_an_unmeasured_layer_measures_it_first(fake_world: World) -> None:
    """A child's snapshot shares every block of its parent, after which thin_ls counts none
    of them as the parent's: Prepare (or View) of a child measures the parent first, in one
    thin_ls with every other unmeasured layer, so the parent's Usage stays what it wrote."""
    snaps = snapshotter(fake_world)
    _written_roots(fake_world, snaps, {"a": 2 << 20, "b": 1 << 20})
    snaps.commit("layer-a", "a")
    snaps.commit("layer-b", "b")
    before = _thin_ls_runs(fake_world)
    snaps.prepare("child", "layer-a")
    snaps.view("look", "layer-b")
    assert _thin_ls_runs(fake_world) == before + 1, "both layers measured by the first child"
    assert snaps.usage("layer-a").size == 2 << 20
    assert snaps.usage("layer-b").size == 1 << 20
    assert _thin_ls_runs(fake_world) == before + 1


def test_an_unmeasured_layer_is_measured_after_a_restart(fake_world: World) -> None:
    """The store says which layers are not measured yet: a daemon started anew measures them
    when asked, and a measured figure survives a restart unchanged."""
    snaps = snapshotter(fake_world)
    _written_roots(fake_world, snaps, {"a": 1 << 20, "b": 3 << 20})
    snaps.commit("layer-a", "a")
    assert snaps.usage("layer-a").size == 1 << 20
    snaps.commit("layer-b", "b")
    assert fake_world.store is not None
    fake_world.store.close()
    fake_world.store = Store(fake_world.settings.database_path, fake_world.clock)
    again = snapshotter(fake_world)
    assert [r.key for r in fake_world.store.unmeasured_snapshots()] == ["layer-b"]
    before = _thin_ls_runs(fake_world)
    assert again.usage("layer-a").size == 1 << 20
    assert _thin_ls_runs(fake_world) == before, "measured before the restart: stored"
    assert again.usage("layer-b").size == 3 << 20
    assert _thin_ls_runs(fake_world) == before + 1


def test_async_remove_waits_for_cleanup(tmp_path: object) -> None:
    """With async_remove a removed snapshot disappears from the API at once and its device
    is deleted by Cleanup."""
    from pathlib import Path

    settings = make_settings(Path(str(tmp_path)), "rtpool", async_remove=True)
    world = World(host=FakeKernel(), settings=settings, real=False)
    try:
        snaps = snapshotter(world)
        snaps.prepare("x")
        snaps.remove("x")
        with pytest.raises(NotFound):
            snaps.stat("x")
        assert world.store is not None
        # Id 0 is the base's, 1 the snapshot's.
        assert held_ids(world.store) == {0, 1}, "the device waits for Cleanup"
        assert world.kernel_names() == set(), "deactivated meanwhile"
        snaps.cleanup()
        assert held_ids(world.store) == {0}
        assert world.store.device("snap-1") is not None
        assert world.store.device("snap-1").state == "Removed"  # type: ignore[union-attr]
    finally:
        world.teardown()


def test_discard_blocks_frees_pool_space(tmp_path: object) -> None:
    """With discard_blocks, removing an active snapshot discards its blocks first."""
    from pathlib import Path

    settings = make_settings(Path(str(tmp_path)), "rtpool", discard_blocks=True)
    world = World(host=FakeKernel(), settings=settings, real=False)
    try:
        snaps = snapshotter(world)
        dev = snaps.prepare("x")[0].source
        world.host.write(dev, 0, os.urandom(4 << 20))
        snaps.remove("x")
        discards = [c for c in world.host.calls if c[0] == "blkdiscard"]  # type: ignore[attr-defined]
        assert discards == [("blkdiscard", dev)]
    finally:
        world.teardown()


def test_full_pool_is_unavailable_and_leaves_nothing(fake_world: World) -> None:
    """A Prepare the kernel refuses answers Unavailable with the device's error; the half-made
    device is removed again and its history stays in the store."""
    snaps = snapshotter(fake_world)
    kernel = fake_world.host
    assert isinstance(kernel, FakeKernel)
    snaps.prepare("first")
    # A root is a snapshot of the base (made by the first Prepare).
    kernel.faults.fail(Op.MESSAGE, fake_world.pool, errno=errno.ENOSPC, verb="create_snap")
    with pytest.raises(Unavailable, match="No space left"):
        snaps.prepare("second")
    with pytest.raises(NotFound):
        snaps.stat("second")
    assert fake_world.store is not None
    record = fake_world.store.device("snap-2")
    assert record is not None and record.state in ("Removed", "Faulty")
    assert [i.name for i in snaps.walk()] == ["first"]


def test_snapshot_names_are_reserved_for_the_api() -> None:
    """A spec file may not take a snapshotter device's name."""
    with pytest.raises(SpecError, match="snapshotter"):
        parse_spec("snap-3", "", Defaults(size=Bytes(1 << 20), filesystem=Filesystem.EXT4))


def test_spec_files_and_snapshots_share_status(fake_world: World) -> None:
    """Devices of spec files and of the API show side by side, with kind and key."""
    fake_world.spec("web", 'size = "64MiB"\n')
    snaps = snapshotter(fake_world)
    snaps.prepare("ns/1/key")
    fake_world.run_pass()
    report = fake_world.report()
    devices = {d["name"]: d for d in report["devices"]}
    assert devices["web"]["snapshot"] is None
    assert devices["snap-1"]["snapshot"]["key"] == "ns/1/key"
    assert devices["snap-1"]["snapshot"]["kind"] == "active"
    assert devices["snap-1"]["state"] == "Activated"


def test_the_device_follows_the_stored_wishes_not_the_kind(fake_world: World) -> None:
    """Reconcile reads a stored snapshot's active and read-only fields as its spec; what a
    containerd kind means is decided by the snapshotter alone (here a "committed" row asks
    for a writable live device, and gets one)."""
    assert fake_world.store is not None
    fake_world.store.save_snapshot(SnapshotRecord(
        name="snap-1", seq=1, key="k", kind=Kind.COMMITTED, size_bytes=64 << 20,
        filesystem=Filesystem.NONE, active=True, readonly=False))
    assert fake_world.run_pass().ok
    info = DmClient(fake_world.host).info(f"{fake_world.pool}-snap-1")
    assert info is not None and not info.readonly
    record = fake_world.store.snapshot("snap-1")
    assert record is not None
    record.active = False
    fake_world.store.save_snapshot(record)
    assert fake_world.run_pass().ok
    assert fake_world.kernel_names() == set()
    device = fake_world.store.device("snap-1")
    assert device is not None and device.state == "Deactivated"
