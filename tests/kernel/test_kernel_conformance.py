"""Conformance to containerd's snapshotter contract on a real kernel: `reconciler run` as a
process, driven over gRPC as containerd's proxy plugin drives it, and every snapshot mounted
with mount(8) from what Prepare, View and Mounts return, as `ctr snapshots mounts ... | sh`
does. The cases follow containerd's own snapshotter suite (snapshots/testsuite): empty
snapshots, mount options, times, commit of a mounted snapshot, layer semantics compared tree
against tree, a deep chain and several unpacks at once.

A fresh pool per case costs more VM time than the cases themselves (under software
emulation), so one daemon per filesystem type serves the module; each case uses keys of its
own, unmounts and removes everything it made at the end and must leave no Faulty device.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from reconciler.api.proto import snapshots_pb2 as pb
from reconciler.api.proto import snapshots_pb2_grpc
from reconciler.dm.host import SystemHost
from reconciler.status import build_report
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import KERNEL_AVAILABLE, World, make_settings
from reconciler.testing.world import wait_for as shared_wait_for
from reconciler.tools.loopback import LoopbackFiles

pytestmark = pytest.mark.kernel
TIMEOUT = 120.0
FS_TYPES = ("ext4", "xfs")
# Debian's mkfs.xfs refuses a filesystem smaller than 300MiB. Thin devices are sparse, so a
# larger base costs only what mkfs writes.
BASE_IMAGE_SIZE = {"ext4": "64MiB", "xfs": "320MiB"}
# The pool's data file lives in the VM's RAM (its /tmp, about 1GiB), and a pool allocates
# fresh blocks until it reaches its end before it reuses freed ones: the file grows to this
# size at most. Each xfs made writes its 64MiB log; the ext4 deep chain keeps its layers.
LOOPBACK_DATA_SIZE = {"ext4": "1GiB", "xfs": "512MiB"}
MIB = 1024 * 1024
DEEP_CHAIN = 128
UNPACKS = 4
UNPACK_LAYERS = 4
EXT4_ONLY = pytest.mark.parametrize("daemon", ["ext4"], indirect=True)
LIBC = ctypes.CDLL(None, use_errno=True)
MS_RDONLY = 1


def wait_for(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """conftest's wait_for with this module's patience."""
    shared_wait_for(what, check, timeout)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    """The status code a call fails with (it must fail)."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    code: grpc.StatusCode = caught.value.code()
    return code


@dataclass
class Daemon:
    """`reconciler run` serving the snapshots API on a pool of its own."""

    fs_type: str
    world: World
    socket: Path
    log: Path
    process: subprocess.Popen[bytes]

    def report(self) -> dict[str, Any]:
        """`status --json`, read as the status command reads it (a store of its own)."""
        store = Store(self.world.settings.database_path, time.time)
        try:
            return build_report(self.world.settings, store, SystemHost())
        finally:
            store.close()

    def devices(self) -> list[dict[str, Any]]:
        """The devices `status --json` shows (Removed ones left out)."""
        found: list[dict[str, Any]] = self.report()["devices"]
        return found

    def faulty(self) -> set[str]:
        """Names of the Faulty devices."""
        return {d["name"] for d in self.devices() if d["state"] == "Faulty"}

    def logs(self) -> str:
        """The end of the daemon's log, for failure messages."""
        return "--- daemon log (tail)\n" + self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module", params=FS_TYPES)
def daemon(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """`reconciler run` as a process with a config file, making `fs_type` filesystems."""
    if not KERNEL_AVAILABLE:
        pytest.skip("needs device-mapper and root")
    fs_type: str = request.param
    work = tmp_path_factory.mktemp(f"conformance-{fs_type}")
    pool = f"rk{secrets.token_hex(3)}"
    socket = work / "snap.sock"
    settings = make_settings(work, pool, fs_type=fs_type,
                             base_image_size=BASE_IMAGE_SIZE[fs_type],
                             loopback_data_size=LOOPBACK_DATA_SIZE[fs_type],
                             loopback_metadata_size="32MiB", grpc_socket=str(socket))
    world = World(host=SystemHost(), settings=settings, real=True)
    assert world.store is not None
    world.store.close()
    config = write_config(
        work / "reconciler.toml", root_path=settings.root_path, pool_name=pool,
        fs_type=fs_type, loopback_data_size=LOOPBACK_DATA_SIZE[fs_type],
        loopback_metadata_size="32MiB", base_image_size=BASE_IMAGE_SIZE[fs_type],
        grpc_socket=socket,
        # Calls drive the partial passes they need; a frequent full resync would only compete
        # with them for the VM's time.
        resync_interval="60s", retry_initial="200ms", retry_max="2s")
    log = work / "daemon.log"
    process = DaemonProcess(config, fake_kernel=False, log=log).start().process
    running = Daemon(fs_type, world, socket, log, process)
    try:
        wait_for("the daemon's gRPC socket",
                 lambda: socket.is_socket() or process.poll() is not None)
        assert process.poll() is None, f"the daemon exited\n{running.logs()}"
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        world.teardown()
        # Give the RAM they hold back to the next daemon's pool.
        files = LoopbackFiles.under(settings.root_path)
        files.data.unlink(missing_ok=True)
        files.metadata.unlink(missing_ok=True)


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

    def __init__(self, daemon: Daemon, prefix: str, work: Path, ledger: Ledger) -> None:
        self.daemon = daemon
        self.prefix = prefix
        self.work = work
        self.ledger = ledger
        self.channel = grpc.insecure_channel(f"unix:{daemon.socket}")
        grpc.channel_ready_future(self.channel).result(timeout=TIMEOUT)
        with ledger.lock:
            ledger.channels.append(self.channel)
        self.stub: Any = snapshots_pb2_grpc.SnapshotsStub(  # type: ignore[no-untyped-call]
            self.channel)

    def clone(self) -> Client:
        """Another client of the same case, on a channel of its own."""
        return Client(self.daemon, self.prefix, self.work, self.ledger)

    def key(self, name: str) -> str:
        """The snapshot key of `name` in this case ("" stays "": no parent)."""
        return f"{self.prefix}/{name}" if name else ""

    def _made(self, name: str) -> None:
        with self.ledger.lock:
            self.ledger.keys.append(self.key(name))

    # -- the snapshots API, with this case's keys -------------------------------------------

    def prepare(self, name: str, parent: str = "") -> list[Any]:
        """Prepare: an active snapshot, and its mounts."""
        response = self.stub.Prepare(pb.PrepareSnapshotRequest(
            key=self.key(name), parent=self.key(parent)), timeout=TIMEOUT)
        self._made(name)
        return list(response.mounts)

    def view(self, name: str, parent: str = "") -> list[Any]:
        """View: a read-only snapshot, and its mounts."""
        response = self.stub.View(pb.ViewSnapshotRequest(
            key=self.key(name), parent=self.key(parent)), timeout=TIMEOUT)
        self._made(name)
        return list(response.mounts)

    def mounts(self, name: str) -> list[Any]:
        """Mounts of an existing snapshot."""
        return list(self.stub.Mounts(pb.MountsRequest(key=self.key(name)),
                                     timeout=TIMEOUT).mounts)

    def commit(self, name: str, active: str) -> str:
        """Commit active snapshot `active` as `name`; returns `name` (the next parent)."""
        self.stub.Commit(pb.CommitSnapshotRequest(name=self.key(name), key=self.key(active)),
                         timeout=TIMEOUT)
        self._made(name)
        return name

    def remove(self, name: str) -> None:
        """Remove a snapshot."""
        self.stub.Remove(pb.RemoveSnapshotRequest(key=self.key(name)), timeout=TIMEOUT)

    def stat(self, name: str) -> Any:
        """Stat: the snapshot's Info."""
        return self.stub.Stat(pb.StatSnapshotRequest(key=self.key(name)),
                              timeout=TIMEOUT).info

    def update_label(self, name: str, label: str, value: str) -> Any:
        """Update one label (containerd's field path `labels.<key>`); the new Info."""
        return self.stub.Update(pb.UpdateSnapshotRequest(
            info=pb.Info(name=self.key(name), labels={label: value}),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{label}"])),
            timeout=TIMEOUT).info

    def usage(self, name: str) -> Any:
        """Usage: bytes and inodes beyond the parent."""
        return self.stub.Usage(pb.UsageRequest(key=self.key(name)), timeout=TIMEOUT)

    def mine(self) -> list[Any]:
        """Infos of this case's snapshots, from List."""
        return [info for response in self.stub.List(pb.ListSnapshotsRequest(),
                                                    timeout=TIMEOUT)
                for info in response.info if info.name.startswith(f"{self.prefix}/")]

    # -- mounting ---------------------------------------------------------------------------

    def mount(self, mounts: Sequence[Any]) -> Path:
        """Mount what the API returned at a new mount point, as mount(8) is told by `ctr
        snapshots mounts`: the type, the source and the options joined by commas."""
        (only,) = mounts
        with self.ledger.lock:
            self.ledger.serial += 1
            target = self.work / f"m{self.ledger.serial}"
        target.mkdir()
        argv = ["mount", "-t", only.type]
        if only.options:
            argv += ["-o", ",".join(only.options)]
        done = subprocess.run([*argv, only.source, str(target)], capture_output=True,
                              text=True, timeout=TIMEOUT)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
        with self.ledger.lock:
            self.ledger.mounted.append(target)
        return target

    def umount(self, target: Path) -> None:
        """Unmount a mount point this case mounted."""
        subprocess.run(["umount", str(target)], check=True, timeout=TIMEOUT)
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

    @contextmanager
    def mounted_by_syscall(self, mounts: Sequence[Any]) -> Iterator[Path]:
        """Mounted for the block with mount(2) itself, as mount(8) would mount it: for a
        case that mounts hundreds of times, where a process each is most of its VM time."""
        (only,) = mounts
        with self.ledger.lock:
            self.ledger.serial += 1
            target = self.work / f"m{self.ledger.serial}"
        target.mkdir()
        flags = MS_RDONLY if "ro" in only.options else 0
        data = ",".join(o for o in only.options if o not in ("ro", "rw"))
        if LIBC.mount(only.source.encode(), str(target).encode(), only.type.encode(), flags,
                      data.encode()) != 0:
            raise OSError(ctypes.get_errno(), f"mount {only.source} {target}: "
                          f"{os.strerror(ctypes.get_errno())}")
        with self.ledger.lock:
            self.ledger.mounted.append(target)
        try:
            yield target
        finally:
            if LIBC.umount2(str(target).encode(), 0) != 0:
                raise OSError(ctypes.get_errno(), f"umount {target}: "
                              f"{os.strerror(ctypes.get_errno())}")
            with self.ledger.lock:
                self.ledger.mounted.remove(target)

    # -- the end of a case ------------------------------------------------------------------

    def clean_up(self) -> list[str]:
        """Unmount and remove what the case left, leaves first; what could not be undone."""
        problems: list[str] = []
        for target in reversed(list(self.ledger.mounted)):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
                # Still busy (a failed case left a file open): detach it, so the
                # device can close once nothing holds it.
                subprocess.run(["umount", "-l", str(target)], capture_output=True)
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


@pytest.fixture
def client(daemon: Daemon, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Client]:
    """A client for one case; at its end everything the case made is unmounted and removed,
    and no device may have become Faulty meanwhile."""
    faulty_before = daemon.faulty()
    case = Client(daemon, request.node.originalname, tmp_path, Ledger())
    yield case
    problems = case.clean_up()
    new_faulty = daemon.faulty() - faulty_before
    if new_faulty:
        problems.append(f"Faulty devices: {sorted(new_faulty)}")
    assert not problems, "\n".join(problems) + "\n" + daemon.logs()


# -- trees ------------------------------------------------------------------------------------


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


def assert_same_tree(root: Path, reference: Path) -> None:
    """The tree under `root` is the tree under `reference`."""
    differences = tree_differences(capture(root), capture(reference))
    assert not differences, "\n".join(differences)


Change = Callable[[Path], None]


def check_layers(client: Client, changes: Sequence[Change], reference: Path) -> None:
    """containerd's layer check: each change made in an active snapshot of the layer below
    and committed, and made to a plain directory as well; a child of the top layer must
    show the plain directory's tree."""
    reference.mkdir()
    parent = ""
    for index, change in enumerate(changes):
        with client.mounted(client.prepare(f"active-{index}", parent)) as root:
            change(root)
        change(reference)
        parent = client.commit(f"layer-{index}", f"active-{index}")
    with client.mounted(client.prepare("top", parent)) as root:
        assert_same_tree(root, reference)


def write(path: Path, text: str, mode: int | None = None) -> None:
    """Write a file (making its directory), with an exact mode when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        os.chmod(path, mode)


def mkdir(path: Path, mode: int) -> None:
    """A directory of exactly `mode` (mkdir's mode goes through the umask)."""
    path.mkdir(parents=True)
    os.chmod(path, mode)


# -- empty snapshots, mount options, times -----------------------------------------------------


def test_fresh_snapshots_are_empty(client: Client) -> None:
    """A Prepare and a View without a parent mount as an empty filesystem (no lost+found),
    whose root directory is 0755."""
    for made in (client.prepare("active"), client.view("view")):
        with client.mounted(made) as root:
            assert os.listdir(root) == []
            assert stat.S_IMODE(os.stat(root).st_mode) == 0o755


def test_mount_options_say_rw_or_ro(client: Client, daemon: Daemon) -> None:
    """An active snapshot's mount says "rw" (`ctr snapshots mounts | sh` must mount it
    writable), a view's and a committed one's "ro"; xfs ones also "nouuid", and all three,
    sharing one filesystem UUID, mount at once."""
    extra = {"nouuid"} if daemon.fs_type == "xfs" else set()
    # xfs cannot replay a log on a read-only device: read-only mounts skip it.
    ro_extra = {"norecovery"} if daemon.fs_type == "xfs" else set()
    (base,) = client.prepare("base")
    assert base.type == daemon.fs_type
    assert set(base.options) == {"rw", *extra}, list(base.options)
    with client.mounted([base]) as root:
        write(root / "f", "data\n")
    client.commit("committed", "base")
    (view,) = client.view("view", "committed")
    (child,) = client.prepare("child", "committed")
    (committed,) = client.mounts("committed")
    assert set(view.options) == {"ro", *extra, *ro_extra}, list(view.options)
    assert set(committed.options) == {"ro", *extra, *ro_extra}, list(committed.options)
    assert set(child.options) == {"rw", *extra}, list(child.options)
    with client.mounted([view]) as a, client.mounted([committed]) as b, \
            client.mounted([child]) as c:
        assert [(p / "f").read_text() for p in (a, b, c)] == ["data\n"] * 3
        (c / "g").write_text("the child is writable\n")


@EXT4_ONLY
def test_times_of_prepare_view_commit_and_update(client: Client) -> None:
    """Prepare and View: created_at == updated_at. Commit makes a new snapshot: both times
    are the commit's, after the Prepare. Update moves updated_at only."""
    client.prepare("active")
    prepared = client.stat("active")
    assert prepared.created_at == prepared.updated_at
    client.view("view")
    viewed = client.stat("view")
    assert viewed.created_at == viewed.updated_at
    client.commit("committed", "active")
    committed = client.stat("committed")
    assert committed.created_at == committed.updated_at
    assert committed.created_at.ToNanoseconds() > prepared.created_at.ToNanoseconds()
    updated = client.update_label("committed", "containerd.io/gc.root", "x")
    assert updated.created_at == committed.created_at
    assert updated.updated_at.ToNanoseconds() > committed.updated_at.ToNanoseconds()
    assert client.stat("committed") == updated


# -- commit of a mounted snapshot --------------------------------------------------------------


def test_commit_while_mounted(client: Client, daemon: Daemon) -> None:
    """Commit with the active snapshot still mounted succeeds and leaves its device healthy;
    children of it work and see what was written while the old mount stays; Remove of it is
    refused (FAILED_PRECONDITION) while that mount holds the device, and once unmounted it
    is removed and its device goes away."""
    (active,) = client.prepare("active")
    old = client.mount([active])
    write(old / "written", "before commit\n")
    client.commit("committed", "active")
    device = active.source.removeprefix("/dev/mapper/")
    name = device.removeprefix(f"{daemon.world.pool}-")
    state = {d["name"]: d for d in daemon.devices()}[name]
    assert state["state"] != "Faulty", f"{state}\n{daemon.logs()}"
    # Deactivated, its removal left to the kernel until the old mount closes.
    assert (state["state"], state["deferred_removal"]) == ("Deactivated", True), state

    for made in (client.prepare("child", "committed"), client.view("view", "committed")):
        with client.mounted(made) as root:
            assert (root / "written").read_text() == "before commit\n"
    client.remove("child")
    client.remove("view")

    assert code_of(lambda: client.remove("committed")) == grpc.StatusCode.FAILED_PRECONDITION
    assert client.stat("committed").kind == pb.COMMITTED
    client.umount(old)
    client.remove("committed")
    assert code_of(lambda: client.stat("committed")) == grpc.StatusCode.NOT_FOUND
    wait_for(f"{device} gone from the kernel",
             lambda: device not in daemon.world.kernel_names())


# -- layer semantics ---------------------------------------------------------------------------


def test_file_content_updates(client: Client, tmp_path: Path) -> None:
    """Files rewritten, appended to and truncated in upper layers show their last content."""
    def first(root: Path) -> None:
        write(root / "a", "first\n")
        write(root / "b", "kept\n")
        write(root / "d/c", "to be truncated\n")

    def second(root: Path) -> None:
        write(root / "a", "second, longer than the first\n")
        with (root / "b").open("a") as appended:
            appended.write("and appended\n")
        (root / "d/c").write_text("")

    def third(root: Path) -> None:
        write(root / "a", "3\n")

    check_layers(client, [first, second, third], tmp_path / "reference")


def test_directory_removed_in_a_lower_layer(client: Client, tmp_path: Path) -> None:
    """A directory removed in one layer and made again in the next holds only the new
    layer's files."""
    def create(root: Path) -> None:
        write(root / "lib/a", "a\n")
        write(root / "lib/sub/b", "b\n")

    def remove(root: Path) -> None:
        shutil.rmtree(root / "lib")

    def again(root: Path) -> None:
        write(root / "lib/c", "c\n")

    check_layers(client, [create, remove, again], tmp_path / "reference")


def test_files_deleted_in_a_child(client: Client, tmp_path: Path) -> None:
    """Files deleted in an upper layer are gone; their neighbours stay."""
    def create(root: Path) -> None:
        for path in ("a", "b", "d/x", "d/y"):
            write(root / path, f"{path}\n")

    def delete(root: Path) -> None:
        (root / "a").unlink()
        (root / "d/x").unlink()

    check_layers(client, [create, delete], tmp_path / "reference")


def test_file_moved_out_of_a_lower_layer(client: Client, tmp_path: Path) -> None:
    """A file moved out of a lower layer's directory is at its new place only."""
    def create(root: Path) -> None:
        write(root / "lib/a", "moved\n")
        write(root / "lib/b", "stays\n")

    def move(root: Path) -> None:
        (root / "lib/a").rename(root / "a")

    check_layers(client, [create, move], tmp_path / "reference")


def test_renames(client: Client, tmp_path: Path) -> None:
    """Directories and files renamed across layers, one rename replacing a file."""
    def create(root: Path) -> None:
        write(root / "dir1/f", "f\n")
        write(root / "dir2/g", "g\n")
        write(root / "h", "h\n")

    def rename(root: Path) -> None:
        (root / "dir1").rename(root / "dir3")
        (root / "h").rename(root / "dir2/h")

    def replace(root: Path) -> None:
        (root / "dir3/f").rename(root / "f2")
        os.replace(root / "dir2/h", root / "dir2/g")

    check_layers(client, [create, rename, replace], tmp_path / "reference")


def test_chown_keeps_uid_and_gid(client: Client, tmp_path: Path) -> None:
    """Owners set on files, directories and symlinks survive commit and snapshot."""
    def create(root: Path) -> None:
        write(root / "f", "f\n")
        write(root / "d/e", "e\n")
        (root / "l").symlink_to("f")

    def chown(root: Path) -> None:
        os.chown(root / "f", 1000, 1001)
        os.chown(root / "d", 2000, 2002)
        os.lchown(root / "l", 3000, 3003)

    def chown_deeper(root: Path) -> None:
        os.chown(root / "d/e", 4000, 4004)

    check_layers(client, [create, chown, chown_deeper], tmp_path / "reference")


def test_directory_permissions_kept_on_commit(client: Client, tmp_path: Path) -> None:
    """Directory modes (private, group, sticky, setgid) and file modes (setuid, private)
    survive commit, and a later chmod wins."""
    def create(root: Path) -> None:
        mkdir(root / "d700", 0o700)
        mkdir(root / "d750", 0o750)
        mkdir(root / "sticky", 0o1777)
        mkdir(root / "setgid", 0o2755)
        write(root / "d700/setuid", "x\n", 0o4755)
        write(root / "private", "p\n", 0o600)

    def chmod(root: Path) -> None:
        os.chmod(root / "d750", 0o711)

    check_layers(client, [create, chmod], tmp_path / "reference")


def test_hard_links_and_symlinks(client: Client, tmp_path: Path) -> None:
    """Hard links stay one inode across layers (added to and unlinked in upper layers);
    relative, absolute, dangling and directory symlinks keep their targets."""
    def create(root: Path) -> None:
        write(root / "a", "shared inode\n")
        os.link(root / "a", root / "b")
        (root / "rel").symlink_to("a")
        (root / "abs").symlink_to("/a")
        (root / "dangling").symlink_to("nowhere")
        mkdir(root / "dir", 0o755)
        (root / "dirlink").symlink_to("dir")

    def link_more(root: Path) -> None:
        os.link(root / "b", root / "dir/c")
        (root / "dir/up").symlink_to("../b")

    def unlink_first(root: Path) -> None:
        (root / "a").unlink()

    check_layers(client, [create, link_more, unlink_first], tmp_path / "reference")


def test_removing_an_intermediate_snapshot(client: Client) -> None:
    """A committed snapshot with children (committed or active) cannot be removed
    (FAILED_PRECONDITION) and stays; once its children are gone it can."""
    client.prepare("a0")
    client.commit("l0", "a0")
    client.prepare("a1", "l0")
    client.commit("l1", "a1")
    client.prepare("a2", "l1")
    assert code_of(lambda: client.remove("l0")) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: client.remove("l1")) == grpc.StatusCode.FAILED_PRECONDITION
    assert client.stat("l0").kind == client.stat("l1").kind == pb.COMMITTED
    client.remove("a2")
    assert code_of(lambda: client.remove("l0")) == grpc.StatusCode.FAILED_PRECONDITION
    client.remove("l1")
    client.remove("l0")
    assert client.mine() == []


def test_a_view_is_read_only(client: Client) -> None:
    """Writing in a view's mount fails with EROFS: new files and existing ones alike."""
    with client.mounted(client.prepare("active")) as root:
        write(root / "f", "lower\n")
    client.commit("committed", "active")
    with client.mounted(client.view("view", "committed")) as root:
        for attempt in (lambda: (root / "new").write_text("x"),
                        lambda: (root / "f").write_text("x"),
                        lambda: (root / "d").mkdir()):
            with pytest.raises(OSError, match="Read-only file system") as caught:
                attempt()
            assert caught.value.errno == errno.EROFS
        assert (root / "f").read_text() == "lower\n"


def test_stat_inside_a_list_stream(client: Client) -> None:
    """Stat called for each snapshot while the List stream is still being read (containerd's
    Walk callback does) answers the same Info."""
    client.prepare("active")
    client.commit("committed", "active")
    client.prepare("child", "committed")
    client.view("view", "committed")
    seen: dict[str, Any] = {}
    for response in client.stub.List(pb.ListSnapshotsRequest(), timeout=TIMEOUT):
        for info in response.info:
            if info.name.startswith(f"{client.prefix}/"):
                stat_info = client.stub.Stat(pb.StatSnapshotRequest(key=info.name),
                                             timeout=TIMEOUT).info
                seen[info.name.removeprefix(f"{client.prefix}/")] = (info, stat_info)
    assert sorted(seen) == ["child", "committed", "view"]
    for listed, stated in seen.values():
        assert listed == stated


def test_closing_a_client_twice(client: Client, daemon: Daemon) -> None:
    """Close twice. Our API has no Close RPC: containerd's proxy plugin's Close closes its
    gRPC connection. A client closing its channel twice harms nobody: another client's
    calls and a new connection are answered, and the snapshots are kept."""
    client.prepare("kept")
    closing, other = client.clone(), client.clone()
    assert closing.stat("kept").kind == pb.ACTIVE
    closing.channel.close()
    closing.channel.close()
    assert other.stat("kept").kind == pb.ACTIVE
    assert client.clone().stat("kept").kind == pb.ACTIVE
    assert daemon.process.poll() is None


def test_usage_grows_with_writes(client: Client) -> None:
    """A fresh root uses no bytes of its own (its filesystem's blocks are the base's, shared);
    1 MiB of random data written and synced adds at least 1 MiB."""
    mounts = client.prepare("active")
    empty = client.usage("active")
    assert empty.size == 0
    with client.mounted(mounts) as root:
        with (root / "random").open("wb") as out:
            out.write(os.urandom(MIB))
            out.flush()
            os.fsync(out.fileno())
        grown = client.usage("active")
    assert grown.size >= empty.size + MIB, (empty, grown)


# -- many layers, many unpacks -----------------------------------------------------------------


def layer_files(tag: str) -> Change:
    """One layer of an image: a file of its own, and a file every layer overwrites."""
    def change(root: Path) -> None:
        (root / f"layer-{tag}").write_text(f"{tag}\n")
        (root / "shared").write_text(f"last written by {tag}\n")
    return change


@EXT4_ONLY
def test_deep_chain(client: Client, tmp_path: Path) -> None:
    """128 committed layers, each one file of its own and one file overwritten: a child of
    the top shows all 128 files and the last overwrite."""
    reference = tmp_path / "reference"
    reference.mkdir()
    parent = ""
    for layer in range(DEEP_CHAIN):
        change = layer_files(f"{layer:03d}")
        with client.mounted_by_syscall(client.prepare(f"a{layer}", parent)) as root:
            change(root)
        change(reference)
        parent = client.commit(f"l{layer}", f"a{layer}")
    with client.mounted(client.prepare("top", parent)) as root:
        assert_same_tree(root, reference)
        assert len(os.listdir(root)) == DEEP_CHAIN + 1


@EXT4_ONLY
def test_concurrent_unpacks(client: Client, daemon: Daemon, tmp_path: Path) -> None:
    """Four images unpacked at once, each by a client of its own (Prepare, mount, write,
    unmount, Commit, four layers deep): all finish, none Faulty, each image's layers right."""
    def unpack(image: int) -> str:
        own = client.clone()
        parent = ""
        for layer in range(UNPACK_LAYERS):
            active = f"i{image}-a{layer}"
            with own.mounted(own.prepare(active, parent)) as root:
                layer_files(f"{image}.{layer}")(root)
            parent = own.commit(f"i{image}-l{layer}", active)
        return parent

    faulty_before = daemon.faulty()
    with ThreadPoolExecutor(UNPACKS) as pool:
        tops = list(pool.map(unpack, range(UNPACKS)))
    assert daemon.faulty() <= faulty_before
    for image, top in enumerate(tops):
        reference = tmp_path / f"reference-{image}"
        reference.mkdir()
        for layer in range(UNPACK_LAYERS):
            layer_files(f"{image}.{layer}")(reference)
        with client.mounted(client.view(f"check-{image}", top)) as root:
            assert_same_tree(root, reference)
