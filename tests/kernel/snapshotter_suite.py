"""containerd 2.3.4's snapshotter suite (`core/snapshots/testsuite`), ported to Python for
tests/kernel/test_kernel_conformance.py: its 21 cases, each a function of a `Client` (one
case's connection to `reconciler run` over gRPC, as containerd's proxy plugin connects), by
the names the suite gives them (`CASES`), and the suite's helpers (fstest's appliers, its
layer check, its tree comparison).

What the port keeps of the suite, and why it differs where it does:
- Every Prepare, View and Commit carries the suite's one label, `containerd.io/gc.root` set
  to the time the suite was loaded (RFC 3339), or the labels the case itself gives (Walk).
  No case passes any other label (no `containerd.io/snapshot/...`).
- Mounts go through containerd 2.x's mount manager (`core/mount/manager`): it activates
  only mounts whose type carries a transform prefix (`format/`, `mkfs/`, `mkdir/`) or names
  a registered handler (a loop or erofs device); for any other it answers NotImplemented and
  the suite mounts the list itself with mount(2) (`mount.All`). Ours are plain ext4/xfs on a
  /dev/mapper node, so `system_mounts` checks they are ones the manager passes through, and
  they are mounted with mount(2), as mount.All does.
- The suite gives each case a snapshotter of its own (`makeTest`), which for a proxied
  snapshotter is one daemon shared by every case, all at once (`t.Parallel()`). Keys are
  therefore under a prefix of the case's own (the suite's keys are paths in the case's own
  work directory), and Walk is read for the case's keys only.
- Rename runs (1.6's suite skipped it on Linux), renaming `/dir1` to `/dir2` as it does for
  every snapshotter but overlayfs: a directory of a lower layer, renamed in an upper one.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from reconciler.api.proto import snapshots_pb2 as pb
from reconciler.api.proto import snapshots_pb2_grpc

TIMEOUT = 120.0
GC_ROOT = "containerd.io/gc.root"
# The suite's `opt`: every call's label, the time the suite was loaded.
OPT = {GC_ROOT: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
LIBC = ctypes.CDLL(None, use_errno=True)
MS_RDONLY = 1
# Type prefixes containerd 2.x's mount manager transforms before mounting (`Activate`).
MANAGER_TRANSFORMS = ("format", "mkfs", "mkdir")


class SuiteFailure(AssertionError):
    """A check of the suite failed (t.Fatal / t.Error)."""


def expect(condition: bool, message: str) -> None:
    """The suite's assert: fail the case with `message` unless `condition`."""
    if not condition:
        raise SuiteFailure(message)


def fails_with(call: Callable[[], object]) -> grpc.StatusCode:
    """The status code a call fails with; the case fails if it succeeds."""
    try:
        call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    raise SuiteFailure("the call should have failed")


def system_mounts(mounts: Sequence[Any], fs_type: str) -> list[Any]:
    """What containerd 2.x's mount manager leaves to mount(2): every mount here, which it
    must not have to activate (no transform prefix; the daemon's own filesystem type)."""
    expect(len(mounts) >= 1, "expected mounts to have entries")
    for m in mounts:
        prefix = m.type.split("/", 1)[0]
        expect("/" not in m.type and prefix not in MANAGER_TRANSFORMS,
               f"mount {m.type} {m.source}: the mount manager would have to activate it")
        expect(m.type == fs_type and m.source.startswith("/dev/mapper/"),
               f"mount {m.type} {m.source}: not a plain {fs_type} of a mapped device")
    return list(mounts)


def mount_syscall(m: Any, target: Path) -> None:
    """mount(2) of one mount as containerd's mount.All makes it: "ro" a flag, the rest data."""
    flags = MS_RDONLY if "ro" in m.options else 0
    data = ",".join(o for o in m.options if o not in ("ro", "rw"))
    if LIBC.mount(m.source.encode(), str(target).encode(), m.type.encode(), flags,
                  data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {m.source} {target}: {os.strerror(err)}")


def umount_syscall(target: Path) -> None:
    """umount(2)."""
    if LIBC.umount2(str(target).encode(), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


@dataclass
class Ledger:
    """What one case made, shared by its clients (threads): keys in the order they came to
    be (a parent always before its children), mount points still mounted, open channels."""

    keys: list[str] = field(default_factory=list)
    mounted: list[Path] = field(default_factory=list)
    channels: list[grpc.Channel] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    serial: int = 0


class Client:
    """A containerd-like client of one case: its keys live under the case's prefix, so that
    cases sharing the daemon never meet; each client has a gRPC channel of its own."""

    def __init__(self, socket: Path, fs_type: str, prefix: str, work: Path,
                 ledger: Ledger) -> None:
        self.socket = socket
        self.fs_type = fs_type
        self.prefix = prefix
        self.work = work
        self.ledger = ledger
        self.channel = grpc.insecure_channel(f"unix:{socket}")
        grpc.channel_ready_future(self.channel).result(timeout=TIMEOUT)
        with ledger.lock:
            ledger.channels.append(self.channel)
        self.stub: Any = snapshots_pb2_grpc.SnapshotsStub(  # type: ignore[no-untyped-call]
            self.channel)

    def clone(self) -> Client:
        """Another client of the same case, on a channel of its own."""
        return Client(self.socket, self.fs_type, self.prefix, self.work, self.ledger)

    def key(self, name: str) -> str:
        """The snapshot key of `name` in this case ("" stays "": no parent)."""
        return f"{self.prefix}/{name}" if name else ""

    def name(self, key: str) -> str:
        """The case's name of a key (the key itself when it is not the case's)."""
        return key.removeprefix(f"{self.prefix}/")

    def _made(self, name: str) -> None:
        with self.ledger.lock:
            self.ledger.keys.append(self.key(name))

    # -- the snapshots API, with this case's keys -------------------------------------------

    def prepare(self, name: str, parent: str = "",
                labels: dict[str, str] | None = None) -> list[Any]:
        """Prepare: an active snapshot, and its mounts."""
        response = self.stub.Prepare(pb.PrepareSnapshotRequest(
            key=self.key(name), parent=self.key(parent),
            labels=OPT if labels is None else labels), timeout=TIMEOUT)
        self._made(name)
        return list(response.mounts)

    def view(self, name: str, parent: str = "",
             labels: dict[str, str] | None = None) -> list[Any]:
        """View: a read-only snapshot, and its mounts."""
        response = self.stub.View(pb.ViewSnapshotRequest(
            key=self.key(name), parent=self.key(parent),
            labels=OPT if labels is None else labels), timeout=TIMEOUT)
        self._made(name)
        return list(response.mounts)

    def mounts(self, name: str) -> list[Any]:
        """Mounts of an existing snapshot."""
        return list(self.stub.Mounts(pb.MountsRequest(key=self.key(name)),
                                     timeout=TIMEOUT).mounts)

    def commit(self, name: str, active: str, labels: dict[str, str] | None = None) -> str:
        """Commit active snapshot `active` as `name`; returns `name` (the next parent)."""
        self.stub.Commit(pb.CommitSnapshotRequest(
            name=self.key(name), key=self.key(active),
            labels=OPT if labels is None else labels), timeout=TIMEOUT)
        self._made(name)
        return name

    def remove(self, name: str) -> None:
        """Remove a snapshot."""
        self.stub.Remove(pb.RemoveSnapshotRequest(key=self.key(name)), timeout=TIMEOUT)

    def stat(self, name: str) -> Any:
        """Stat: the snapshot's Info."""
        return self.stub.Stat(pb.StatSnapshotRequest(key=self.key(name)),
                              timeout=TIMEOUT).info

    def update(self, info: Any, *paths: str) -> Any:
        """Update with containerd's field paths (none: every label); the new Info."""
        return self.stub.Update(pb.UpdateSnapshotRequest(
            info=info, update_mask=field_mask_pb2.FieldMask(paths=list(paths))),
            timeout=TIMEOUT).info

    def update_label(self, name: str, label: str, value: str) -> Any:
        """Update one label (containerd's field path `labels.<key>`); the new Info."""
        return self.update(pb.Info(name=self.key(name), labels={label: value}),
                           f"labels.{label}")

    def usage(self, name: str) -> Any:
        """Usage: bytes and inodes beyond the parent."""
        return self.stub.Usage(pb.UsageRequest(key=self.key(name)), timeout=TIMEOUT)

    def walk(self, *filters: str) -> list[Any]:
        """Infos of this case's snapshots matching any of `filters` (none: all), from List."""
        return [info for response in self.stub.List(
                    pb.ListSnapshotsRequest(filters=list(filters)), timeout=TIMEOUT)
                for info in response.info if info.name.startswith(f"{self.prefix}/")]

    def mine(self) -> list[Any]:
        """Infos of this case's snapshots, from List."""
        return self.walk()

    # -- mounting ---------------------------------------------------------------------------

    def _target(self) -> Path:
        with self.ledger.lock:
            self.ledger.serial += 1
            target = self.work / f"m{self.ledger.serial}"
        target.mkdir()
        return target

    def mount(self, mounts: Sequence[Any]) -> Path:
        """Mount what the API returned at a new mount point as the suite's `mountAll` does:
        the mount manager passes it through, mount(2) mounts it."""
        (only,) = system_mounts(mounts, self.fs_type)
        target = self._target()
        mount_syscall(only, target)
        with self.ledger.lock:
            self.ledger.mounted.append(target)
        return target

    def mount_command(self, mounts: Sequence[Any]) -> Path:
        """Mount with mount(8), as `ctr snapshots mounts ... | sh` does: the type, the
        source and the options joined by commas."""
        (only,) = system_mounts(mounts, self.fs_type)
        target = self._target()
        argv = ["mount", "-t", only.type]
        if only.options:
            argv += ["-o", ",".join(only.options)]
        done = subprocess.run([*argv, only.source, str(target)], capture_output=True,
                              text=True, timeout=TIMEOUT)
        expect(done.returncode == 0, f"{' '.join(argv)}: {done.stderr}")
        with self.ledger.lock:
            self.ledger.mounted.append(target)
        return target

    def umount(self, target: Path) -> None:
        """Unmount a mount point this case mounted."""
        umount_syscall(target)
        with self.ledger.lock:
            self.ledger.mounted.remove(target)

    @contextmanager
    def mounted(self, mounts: Sequence[Any]) -> Iterator[Path]:
        """Mounted for the block, unmounted after."""
        target = self.mount(mounts)
        try:
            yield target
        finally:
            self.umount(target)

    # -- the end of a case ------------------------------------------------------------------

    def clean_up(self) -> list[str]:
        """Unmount and remove what the case left, leaves first; what could not be undone."""
        problems: list[str] = []
        for target in reversed(list(self.ledger.mounted)):
            if LIBC.umount2(str(target).encode(), 0) != 0:
                # Still busy (a failed case left a file open): detach it, so the
                # device can close once nothing holds it.
                LIBC.umount2(str(target).encode(), 2)  # MNT_DETACH
                problems.append(f"{target} was still busy at the end")
        left = {info.name for info in self.mine()}
        order = [k for k in reversed(self.ledger.keys) if k in left]
        order += sorted(left.difference(order))
        for _ in range(3):
            for key in list(order):
                try:
                    self.stub.Remove(pb.RemoveSnapshotRequest(key=key), timeout=TIMEOUT)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        continue
                order.remove(key)
        if order:
            problems.append(f"snapshots that could not be removed: {order}")
        for channel in self.ledger.channels:
            channel.close()
        return problems


# -- trees: continuity's fstest, as the suite uses it ----------------------------------------


@dataclass(frozen=True)
class Entry:
    """One path of a tree: what a layer must carry through commit and snapshot."""

    kind: str
    mode: int
    uid: int
    gid: int
    content: bytes | str | None = None
    # Every path sharing this file's inode, when it has more than one.
    links: tuple[str, ...] = ()


def capture(root: Path) -> dict[str, Entry]:
    """A tree as relative path -> Entry (the root itself left out)."""
    entries: dict[str, Entry] = {}
    by_inode: dict[int, list[str]] = {}

    def walk(directory: Path, prefix: str) -> None:
        for name in sorted(os.listdir(directory)):
            path = directory / name
            relative = f"{prefix}{name}"
            st = os.lstat(path)
            mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
            if stat.S_ISDIR(st.st_mode):
                entries[relative] = Entry("dir", mode, *owner)
                walk(path, f"{relative}/")
            elif stat.S_ISLNK(st.st_mode):
                entries[relative] = Entry("symlink", mode, *owner, os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                entries[relative] = Entry("file", mode, *owner, path.read_bytes())
                by_inode.setdefault(st.st_ino, []).append(relative)
            else:
                entries[relative] = Entry(stat.filemode(st.st_mode)[0], mode, *owner)

    walk(root, "")
    for paths in by_inode.values():
        if len(paths) > 1:
            for path in paths:
                entries[path] = replace(entries[path], links=tuple(sorted(paths)))
    return entries


def tree_differences(actual: dict[str, Entry], expected: dict[str, Entry]) -> list[str]:
    """Every difference, one line each (empty: the same tree)."""
    lines = [f"missing: {p} ({expected[p]})" for p in sorted(expected.keys() - actual.keys())]
    lines += [f"unexpected: {p} ({actual[p]})" for p in sorted(actual.keys() - expected.keys())]
    lines += [f"differs: {p}: {actual[p]} != expected {expected[p]}"
              for p in sorted(actual.keys() & expected.keys()) if actual[p] != expected[p]]
    return lines


def check_directory_equal(expected: Path, actual: Path) -> None:
    """fstest.CheckDirectoryEqual: the tree under `actual` is the tree under `expected`."""
    differences = tree_differences(capture(actual), capture(expected))
    expect(not differences, "check directory failed:\n" + "\n".join(differences))


Change = Callable[[Path], None]


def apply(*changes: Change) -> Change:
    """fstest.Apply: the changes in order."""
    def applier(root: Path) -> None:
        for change in changes:
            change(root)
    return applier


def _at(root: Path, name: str) -> Path:
    return root / name.lstrip("/")


def create_file(name: str, content: bytes, perm: int) -> Change:
    """fstest.CreateFile: write the file, then chmod it to exactly `perm`."""
    def change(root: Path) -> None:
        _at(root, name).write_bytes(content)
        os.chmod(_at(root, name), perm)
    return change


def create_dir(name: str, perm: int) -> Change:
    """fstest.CreateDir: the directory (and its parents), then chmod it to exactly `perm`."""
    def change(root: Path) -> None:
        _at(root, name).mkdir(parents=True, exist_ok=True)
        os.chmod(_at(root, name), perm)
    return change


def remove_all(name: str) -> Change:
    """fstest.RemoveAll: the path and all below it, if there."""
    def change(root: Path) -> None:
        path = _at(root, name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return change


def chown(name: str, uid: int, gid: int) -> Change:
    """fstest.Chown (lchown)."""
    return lambda root: os.lchown(_at(root, name), uid, gid)


def rename(old: str, new: str) -> Change:
    """fstest.Rename."""
    return lambda root: os.rename(_at(root, old), _at(root, new))


def link(old: str, new: str) -> Change:
    """fstest.Link: a hard link."""
    return lambda root: os.link(_at(root, old), _at(root, new))


# -- the suite's helpers (helpers.go) ---------------------------------------------------------


def apply_to_mounts(client: Client, mounts: Sequence[Any], change: Change) -> None:
    """applyToMounts: mount, apply, unmount."""
    with client.mounted(mounts) as root:
        change(root)


def create_snapshot(client: Client, parent: str, change: Change) -> str:
    """createSnapshot: Prepare on `parent`, apply, Commit under a name of its own."""
    name = f"layer-{secrets.token_hex(4)}"
    prepare = f"{name}-prepare"
    apply_to_mounts(client, client.prepare(prepare, parent), change)
    return client.commit(name, prepare)


def check_snapshot(client: Client, name: str, check: Path) -> None:
    """checkSnapshot: a View of `name`, mounted, shows the tree under `check`."""
    view = f"{name}-view"
    mounts = client.view(view, name)
    try:
        with client.mounted(mounts) as root:
            check_directory_equal(check, root)
    finally:
        client.remove(view)


def check_snapshots(client: Client, *layers: Change) -> None:
    """checkSnapshots: each layer committed on the one below and applied to one flat
    directory; a View of each layer shows the flat directory's tree."""
    flat = Path(tempfile.mkdtemp(prefix="flat", dir=client.work))
    parent = ""
    for layer in layers:
        name = create_snapshot(client, parent, layer)
        layer(flat)
        check_snapshot(client, name, flat)
        parent = name


def prepare_mount(client: Client, name: str, parent: str = "") -> Path:
    """snapshotterPrepareMount: Prepare and mount."""
    return client.mount(client.prepare(name, parent))


def same_info(a: Any, b: Any) -> None:
    """checkInfo: kind, name, parent, labels and both times the same."""
    for attribute in ("kind", "name", "parent", "labels", "created_at", "updated_at"):
        expect(getattr(a, attribute) == getattr(b, attribute),
               f"{a.name}: {attribute} {getattr(a, attribute)} != {getattr(b, attribute)}")


def nanoseconds(timestamp: Any) -> int:
    """A protobuf Timestamp in ns since the epoch."""
    value: int = timestamp.ToNanoseconds()
    return value



# -- the cases (testsuite.go, issues.go), in the suite's order ---------------------------------


def basic(client: Client) -> None:
    """Basic: a layer, a layer on it, Walk, a View of both; the lower one cannot be removed
    while the upper exists."""
    initial = apply(create_file("/foo", b"foo\n", 0o777), create_dir("/a", 0o755),
                    create_dir("/a/b", 0o755), create_dir("/a/b/c", 0o755))
    diff = apply(create_file("/bar", b"bar\n", 0o777), create_file("/foo", b"bar\n", 0o777),
                 remove_all("/a/b"))
    expected = Path(tempfile.mkdtemp(prefix="expected", dir=client.work))
    apply_to_mounts(client, client.prepare("preparing"), initial)
    client.commit("committed", "preparing")
    si = client.stat("committed")
    expect(si.parent == "" and si.kind == pb.COMMITTED, f"committed: {si}")
    fails_with(lambda: client.stat("preparing"))

    with client.mounted(client.prepare("nextlayer", "committed")) as root:
        initial(expected)
        check_directory_equal(expected, root)
        diff(root)
    ni = client.stat("nextlayer")
    expect(ni.parent == client.key("committed") and ni.kind == pb.ACTIVE, f"next: {ni}")
    client.commit("committed-next", "nextlayer")
    si2 = client.stat("committed-next")
    expect(si2.parent == client.key("committed") and si2.kind == pb.COMMITTED, f"{si2}")
    fails_with(lambda: client.stat("nextlayer"))

    walked = {info.name: info for info in client.walk()}
    for info in (si, si2):
        expect(walked.get(info.name) == info, f"Walk: {info.name}: {walked.get(info.name)}")

    with client.mounted(client.view("nextnextlayer", "committed-next")) as root:
        diff(expected)
        check_directory_equal(expected, root)
    client.remove("nextnextlayer")
    try:
        client.remove("committed")
    except grpc.RpcError as exc:
        expect("remove" in (exc.details() or ""), f"the refusal says why: {exc.details()}")
    else:
        raise SuiteFailure("removing a snapshot with a child should fail")
    client.remove("committed-next")
    client.remove("committed")


def stat_active(client: Client) -> None:
    """StatActive: Stat of a mounted, written active snapshot says Active, no parent."""
    root = prepare_mount(client, "preparing")
    try:
        create_file("/foo", b"foo\n", 0o777)(root)
        si = client.stat("preparing")
        expect((si.name, si.kind, si.parent) == (client.key("preparing"), pb.ACTIVE, ""),
               f"{si}")
    finally:
        client.umount(root)


def stat_committed(client: Client) -> None:
    """StatComitted: Commit of a mounted, written snapshot; Stat says Committed."""
    root = prepare_mount(client, "preparing")
    try:
        create_file("/foo", b"foo\n", 0o777)(root)
        client.commit("committed", "preparing")
        si = client.stat("committed")
        expect((si.name, si.kind, si.parent) == (client.key("committed"), pb.COMMITTED, ""),
               f"{si}")
    finally:
        client.umount(root)


def transitivity(client: Client) -> None:
    """TransitivityTest: A <- B; B's parent is A, A has none."""
    root = prepare_mount(client, "preparing")
    create_file("/foo", b"foo\n", 0o777)(root)
    client.umount(root)
    client.commit("snapA", "preparing")
    root = prepare_mount(client, "next", "snapA")
    create_file("/foo", b"foo bar\n", 0o777)(root)
    client.umount(root)
    client.commit("snapB", "next")
    si_a, si_b = client.stat("snapA"), client.stat("snapB")
    si_parent_b = client.stub.Stat(pb.StatSnapshotRequest(key=si_b.parent),
                                   timeout=TIMEOUT).info
    expect(si_a.parent == "", f"{si_a}")
    expect(si_b.parent == client.key("snapA"), f"{si_b}")
    expect(si_parent_b.parent == "", f"{si_parent_b}")


def prepare_view(client: Client) -> None:
    """PreareViewFailingtest: a key taken by Prepare or View cannot be taken again."""
    client.umount(prepare_mount(client, "preparing"))
    client.commit("snapA", "preparing")
    client.prepare("newlayer", "snapA")
    fails_with(lambda: client.view("newlayer", "snapA"))
    client.prepare("prepLayer", "snapA")
    fails_with(lambda: client.prepare("prepLayer", "snapA"))
    client.view("viewLayer", "snapA")
    fails_with(lambda: client.view("viewLayer", "snapA"))


def base_test_snapshots(client: Client) -> None:
    """baseTestSnapshots: c1 <- c2 committed, a1 on c2, a2 alone, v1 on c2, v2 alone."""
    client.prepare("c1-a")
    client.commit("c1", "c1-a")
    client.prepare("c2-a", "c1")
    client.commit("c2", "c2-a")
    client.prepare("a1", "c2")
    client.prepare("a2")
    client.view("v1", "c2")
    client.view("v2")


def update(client: Client) -> None:
    """Update: times and kinds of fresh snapshots; every label replaced, then some by
    field path, then all by "labels"; the parent is immutable (InvalidArgument)."""
    t1 = time.time_ns()
    base_test_snapshots(client)
    t2 = time.time_ns()
    cases = [("c1", pb.COMMITTED, ""), ("c2", pb.COMMITTED, "c1"), ("a1", pb.ACTIVE, "c2"),
             ("a2", pb.ACTIVE, ""), ("v1", pb.VIEW, "c2"), ("v2", pb.VIEW, "")]
    for name, kind, parent in cases:
        st = client.stat(name)
        created = nanoseconds(st.created_at)
        expect(t1 <= created <= t2, f"({name}) created {created} not in [{t1}, {t2}]")
        expect(st.created_at == st.updated_at, f"({name}) updated {st.updated_at}")
        expect((st.kind, st.parent, st.name) == (kind, client.key(parent), client.key(name)),
               f"({name}) {st}")

        root_time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        expected = {"l1": "v1", "l2": "v2", "l3": "v3", GC_ROOT: root_time}
        st.parent = "doesnotexist"
        st.labels.clear()
        st.labels.update(expected)
        u1 = time.time_ns()
        st = client.update(st)
        u2 = time.time_ns()
        expect(st.created_at.ToNanoseconds() == created, f"({name}) created changed: {st}")
        expect(u1 <= nanoseconds(st.updated_at) <= u2, f"({name}) updated {st.updated_at}")
        expect((st.kind, st.parent, st.name) == (kind, client.key(parent), client.key(name)),
               f"({name}) {st}")
        expect(dict(st.labels) == expected, f"({name}) labels {dict(st.labels)}")

        expected = {"l1": "updated", "l3": "v3", GC_ROOT: root_time}
        st.labels.clear()
        st.labels.update({"l1": "updated", "l4": "v4"})
        st = client.update(st, "labels.l1", "labels.l2")
        expect(dict(st.labels) == expected, f"({name}) labels {dict(st.labels)}")

        expected = {"l4": "v4", GC_ROOT: root_time}
        st.labels.clear()
        st.labels.update(expected)
        st = client.update(st, "labels")
        expect(dict(st.labels) == expected, f"({name}) labels {dict(st.labels)}")

        st.parent = "doesnotexist"
        code = fails_with(partial(client.update, st, "parent"))
        expect(code == grpc.StatusCode.INVALID_ARGUMENT, f"({name}) parent update: {code}")


def remove(client: Client) -> None:
    """Remove: a key is free again once its snapshot is removed, and a committed snapshot
    whose children are gone can be removed and its name committed anew."""
    client.prepare("committed-a")
    client.commit("committed-1", "committed-a")
    client.prepare("reuse-1", "committed-1")
    client.remove("reuse-1")
    client.view("reuse-1", "committed-1")
    client.remove("reuse-1")
    client.prepare("reuse-1")
    client.remove("committed-1")
    client.commit("committed-1", "reuse-1")


def walk(client: Client) -> None:
    """Walk: filters by label, kind, name and parent, alone and combined, any-of."""
    mine = {GC_ROOT: "check-walk"}
    client.prepare("a-np", labels=mine)
    client.prepare("p-tmp", labels=mine)
    client.commit("p", "p-tmp", labels=mine)
    client.prepare("a", "p", labels=mine)
    client.view("v", "p", labels=mine)
    client.prepare("p-wl-tmp", labels=mine)
    client.commit("p-wl", "p-wl-tmp", labels={"l": "1", **mine})
    client.prepare("a-wl", "p-wl", labels={"l": "2", **mine})
    client.view("v-wl", "p-wl", labels={"l": "3", **mine})
    client.prepare("a-np-wl", labels={"l": "2", **mine})
    gc_root = 'labels."containerd.io/gc.root"==check-walk'
    cases: list[tuple[list[str], list[str]]] = [
        (["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"], [gc_root]),
        (["a-np", "a", "a-wl", "a-np-wl"], [f"kind==active,{gc_root}"]),
        (["v", "v-wl"], [f"kind==view,{gc_root}"]),
        (["p", "p-wl"], [f"kind==committed,{gc_root}"]),
        (["p", "a-np-wl"], [f"name=={client.key('p')}", f"name=={client.key('a-np-wl')}"]),
        (["a-wl"], [f"name=={client.key('a-wl')},labels.l"]),
        (["a", "v"], [f"parent=={client.key('p')}"]),
        (["a", "v", "a-wl", "v-wl"], [f'parent!="",{gc_root}']),
        (["p-wl", "a-wl", "v-wl", "a-np-wl"], ["labels.l"]),
        (["a-wl", "a-np-wl"], ["labels.l==2"]),
    ]
    for i, (matches, filters) in enumerate(cases):
        actual = sorted(client.name(info.name) for info in client.walk(*filters))
        expect(actual == sorted(matches), f"[{i}] {filters}: {actual} != {sorted(matches)}")


def layer_file_update(client: Client) -> None:
    """LayerFileupdate: a file rewritten and re-moded in an upper layer, five times over,
    each try from the next second boundary."""
    l1 = apply(create_dir("/etc", 0o700),
               create_file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
               create_file("/etc/profile", b"PATH=/usr/bin", 0o644))
    l2 = apply(create_file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
               create_file("/etc/profile", b"PATH=/usr/bin", 0o666),
               create_dir("/root", 0o700),
               create_file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644))
    sleep = 0.0
    for _ in range(5):
        time.sleep(sleep)
        check_snapshots(client, l1, l2)
        now = time.time()
        sleep = int(now) + 1 - now


def remove_directory_in_lower_layer(client: Client) -> None:
    """RemoveDirectoryInLowerLayer: a directory removed and made again hides the old one."""
    check_snapshots(
        client,
        apply(create_dir("/lib", 0o700), create_file("/lib/hidden", b"", 0o644)),
        apply(remove_all("/lib"), create_dir("/lib", 0o700),
              create_file("/lib/not-hidden", b"", 0o644)),
        apply(create_file("/lib/newfile", b"", 0o644)))


def chown_case(client: Client) -> None:
    """Chown: owners changed in an upper layer, directories and a file."""
    check_snapshots(
        client,
        apply(create_dir("/opt", 0o700), create_dir("/opt/a", 0o700),
              create_dir("/opt/a/b", 0o700), create_file("/opt/a/b/file.txt", b"hello", 0o644)),
        apply(chown("/opt", 1, 1), chown("/opt/a", 1, 1), chown("/opt/a/b", 1, 1),
              chown("/opt/a/b/file.txt", 1, 1)))


def directory_permission_on_commit(client: Client) -> None:
    """DirectoryPermissionOnCommit: owners of directories kept, changed, removed and made
    again across three layers."""
    check_snapshots(
        client,
        apply(create_dir("/dir1", 0o700), create_dir("/dir2", 0o700),
              create_dir("/dir3", 0o700), create_dir("/dir4", 0o700),
              create_file("/dir4/f1", b"...", 0o644), create_dir("/dir5", 0o700),
              create_file("/dir5/f1", b"...", 0o644), chown("/dir1", 1, 1),
              chown("/dir2", 1, 1), chown("/dir3", 1, 1), chown("/dir5", 1, 1),
              chown("/dir5/f1", 1, 1)),
        apply(chown("/dir2", 0, 0), remove_all("/dir3"), chown("/dir4", 1, 1),
              chown("/dir4/f1", 1, 1)),
        apply(create_dir("/dir3", 0o700), chown("/dir3", 1, 1), remove_all("/dir5"),
              create_dir("/dir5", 0o700), chown("/dir5", 1, 1)))


def remove_intermediate_snapshot(client: Client) -> None:
    """RemoveIntermediateSnapshot: a committed snapshot with a child cannot be removed
    (FAILED_PRECONDITION); top down, all can."""
    client.umount(prepare_mount(client, "base"))
    client.commit("committed-base", "base")
    client.prepare("intermediate", "committed-base")
    client.commit("committed-inter", "intermediate")
    client.prepare("toplayer", "committed-inter")
    code = fails_with(lambda: client.remove("committed-inter"))
    expect(code == grpc.StatusCode.FAILED_PRECONDITION, f"intermediate removal: {code}")
    client.remove("toplayer")
    client.remove("committed-inter")
    client.remove("committed-base")


def deleted_files_in_child_snapshot(client: Client) -> None:
    """DeletedFilesInChildSnapshot: a file deleted in a child stays deleted above."""
    check_snapshots(
        client,
        apply(create_file("/foo", b"foo\n", 0o777), create_file("/foobar", b"foobar\n", 0o777)),
        apply(remove_all("/foobar")),
        apply())


def move_file_from_lower_layer(client: Client) -> None:
    """MoveFileFromLowerLayer: a directory replaced, a file hard-linked elsewhere and its
    old name removed."""
    check_snapshots(
        client,
        apply(create_dir("/dir1", 0o700), create_file("/dir1/f1", b"Hello", 0o644),
              create_dir("dir2", 0o700), create_file("dir2/f2", b"...", 0o644)),
        apply(create_dir("/dir3", 0o700), create_file("/dir3/f1", b"Hello", 0o644),
              remove_all("/dir1"), link("dir2/f2", "dir3/f2"), remove_all("dir2/f2")))


def view_readonly(client: Client) -> None:
    """ViewReadonly: writing in a mounted View fails (EROFS here)."""
    client.prepare("preparing")
    client.commit("committed", "preparing")
    with client.mounted(client.view("view", "committed")) as root:
        try:
            (root / "testfile").write_bytes(b"testcontent")
        except OSError as exc:
            expect(exc.errno == errno.EROFS, f"write failed with {exc}, not EROFS")
        else:
            raise SuiteFailure("write to a view should fail (EROFS) but did not")
    client.remove("view")
    client.remove("committed")


def stat_in_walk(client: Client) -> None:
    """StatInWalk: Stat of each snapshot while the Walk (List stream) is still being read
    answers the same Info."""
    ns = "stats-in-walk-"
    client.prepare(f"{ns}c1-a")
    client.commit(f"{ns}c1", f"{ns}c1-a")
    client.prepare(f"{ns}c2-a", f"{ns}c1")
    client.commit(f"{ns}c2", f"{ns}c2-a")
    client.prepare(f"{ns}a1", f"{ns}c2")
    client.view(f"{ns}v1", f"{ns}c2")
    seen = 0
    for response in client.stub.List(pb.ListSnapshotsRequest(), timeout=TIMEOUT):
        for info in response.info:
            if info.name.startswith(client.key(ns)):
                same_info(info, client.stub.Stat(pb.StatSnapshotRequest(key=info.name),
                                                 timeout=TIMEOUT).info)
                seen += 1
    expect(seen == 4, f"walked {seen} snapshots of the case, not 4")


def close_twice(client: Client) -> None:
    """CloseTwice: a client closed twice (our API's Close is the proxy's connection
    closing) harms nobody: the daemon goes on answering."""
    own = client.clone()
    name = f"closeTwice-{secrets.randbelow(1 << 31)}"
    own.prepare(f"{name}-prepare")
    own.commit(name, f"{name}-prepare")
    own.remove(name)
    own.channel.close()
    own.channel.close()
    expect(client.clone().walk() == [], "a new connection is answered")


def root_permission(client: Client) -> None:
    """RootPermission: a fresh snapshot's root directory is 0755."""
    root = prepare_mount(client, "preparing")
    try:
        mode = stat.S_IMODE(os.stat(root).st_mode)
        expect(mode == 0o755, f"expected 0755, got 0{mode:o}")
    finally:
        client.umount(root)


def rename_case(client: Client) -> None:
    """Rename: a directory of the lower layer renamed (/dir1 -> /dir2, as for every
    snapshotter but overlayfs), a file replaced by a rename onto it, a file renamed."""
    check_snapshots(
        client,
        apply(create_dir("/dir1", 0o700), create_dir("/somefiles", 0o700),
              create_file("/somefiles/f1", b"was here first!", 0o644),
              create_file("/somefiles/f2", b"nothing interesting", 0o644)),
        apply(rename("/dir1", "/dir2"),
              create_file("/somefiles/f1-overwrite", b"new content 1", 0o644),
              rename("/somefiles/f1-overwrite", "/somefiles/f1"),
              rename("/somefiles/f2", "/somefiles/f3")))


LAYERS = 128


def layers_128_mount(client: Client) -> None:
    """128LayersMount: 128 layers, each checked against a flat directory before and after
    its changes; a View of the top shows the flat tree."""
    appliers = [apply(create_file("/bottom", b"way at the bottom\n", 0o777),
                      create_file("/overwriteme", b"FIRST!\n", 0o777),
                      create_dir("/addhere", 0o755), create_dir("/onlyme", 0o755),
                      create_file("/onlyme/bottom", b"bye!\n", 0o777))]
    appliers += [apply(create_file("/overwriteme", f"{i} WAS HERE!\n".encode(), 0o777),
                       create_file(f"/addhere/file-{i}", b"same\n", 0o755),
                       remove_all("/onlyme"), create_dir("/onlyme", 0o755),
                       create_file(f"/onlyme/file-{i}", b"only me!\n", 0o777))
                 for i in range(1, LAYERS)]
    flat = client.work / "flat"
    flat.mkdir()
    parent = ""
    for i, applier in enumerate(appliers):
        with client.mounted(client.prepare(f"prepare-layer-{i}", parent)) as preparing:
            check_directory_equal(flat, preparing)
            applier(flat)
            applier(preparing)
            check_directory_equal(flat, preparing)
        parent = client.commit(f"committed-{i}", f"prepare-layer-{i}")
    with client.mounted(client.view("fullview", parent)) as view:
        check_directory_equal(flat, view)


Case = Callable[[Client], None]
# The suite's cases by the names SnapshotterSuite gives them, in its order.
CASES: dict[str, Case] = {
    "Basic": basic,
    "StatActive": stat_active,
    "StatComitted": stat_committed,
    "TransitivityTest": transitivity,
    "PreareViewFailingtest": prepare_view,
    "Update": update,
    "Remove": remove,
    "Walk": walk,
    "LayerFileupdate": layer_file_update,
    "RemoveDirectoryInLowerLayer": remove_directory_in_lower_layer,
    "Chown": chown_case,
    "DirectoryPermissionOnCommit": directory_permission_on_commit,
    "RemoveIntermediateSnapshot": remove_intermediate_snapshot,
    "DeletedFilesInChildSnapshot": deleted_files_in_child_snapshot,
    "MoveFileFromLowerLayer": move_file_from_lower_layer,
    "ViewReadonly": view_readonly,
    "StatInWalk": stat_in_walk,
    "CloseTwice": close_twice,
    "RootPermission": root_permission,
    "Rename": rename_case,
    "128LayersMount": layers_128_mount,
}
