"""Conformance to containerd's snapshotter contract on a real kernel: `reconciler run` as a
process, driven over gRPC as containerd's proxy plugin drives it, with containerd 2.3.4's own
snapshotter suite (`core/snapshots/testsuite`, ported in tests/kernel/snapshotter_suite.py:
its 21 cases, Rename included, every mount one that 2.x's mount manager passes through to
mount(2)), ext4 and xfs, run two ways against one daemon per filesystem type:

- serially, one test per case (as containerd 1.6's suite ran a devmapper snapshotter; the
  128-layer case runs in the batch only, where it overlaps the others instead of adding
  minutes of its own), each case checked on its own;
- all 21 at once (2.x's `t.Parallel()` against one snapshotter), each case with keys and a
  gRPC connection of its own, failures collected per case by name; then the daemon must show
  no Faulty device and no device left behind (the kernel's listing against `status`).

Beside the suite, cases of our own: mount options (and mount(8) as `ctr snapshots mounts |
sh` runs it), times, Commit of a mounted snapshot, hard links and symlinks, Usage, and four
unpacks at once. A fresh pool per case costs more VM time than the cases themselves (under
software emulation), so one daemon per filesystem type serves the module; each case uses
keys of its own, unmounts and removes everything it made at the end and must leave no
Faulty device.

RECONCILER_CONFORMANCE_WORKERS (default 21) sets how many cases the batch runs at once:
1 runs the whole suite serially in the same conditions, for docs/performance.md's figures;
RECONCILER_CONFORMANCE_TIMES names a file the batch appends its wall times to (JSON lines).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from reconciler.api.proto import snapshots_pb2 as pb
from reconciler.dm.host import SystemHost
from reconciler.status import build_report
from reconciler.store import Store
from reconciler.testing.config_file import write_config
from reconciler.testing.process import DaemonProcess
from reconciler.testing.world import KERNEL_AVAILABLE, World, make_settings
from reconciler.testing.world import wait_for as shared_wait_for
from reconciler.tools.loopback import LoopbackFiles
from tests.kernel.snapshotter_suite import (
    CASES,
    TIMEOUT,
    Change,
    Client,
    Ledger,
    apply,
    check_directory_equal,
    check_snapshots,
    create_dir,
    create_file,
    link,
    remove_all,
)

pytestmark = pytest.mark.kernel
FS_TYPES = ("ext4", "xfs")
# Debian's mkfs.xfs refuses a filesystem smaller than 300MiB. Thin devices are sparse, so a
# larger base costs only what mkfs writes.
BASE_IMAGE_SIZE = {"ext4": "64MiB", "xfs": "320MiB"}
# The pool's data file lives in the VM's RAM (its /tmp, about 1GiB), and a pool allocates
# fresh blocks until it reaches its end before it reuses freed ones: the file grows to this
# size at most. The 128-layer case keeps its layers until its end, beside 20 other cases.
LOOPBACK_DATA_SIZE = {"ext4": "1GiB", "xfs": "1GiB"}
MIB = 1024 * 1024
UNPACKS = 4
UNPACK_LAYERS = 4
# The case that runs in the batch only (see the module's docstring).
DEEP = "128LayersMount"
WORKERS = int(os.environ.get("RECONCILER_CONFORMANCE_WORKERS", str(len(CASES))))
# Where the batch appends its wall times (a JSON line per filesystem), when set.
TIMES = os.environ.get("RECONCILER_CONFORMANCE_TIMES")
EXT4_ONLY = pytest.mark.parametrize("daemon", ["ext4"], indirect=True)


# The daemon's start: Python's imports and its first pass (the pool, the base's mkfs). Beside
# two other VMs on two CPUs, the imports alone took 150 s under TCG.
START_TIMEOUT = 600.0


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

    def leaks(self, prefix: str) -> list[str]:
        """What is left of the snapshots whose keys start with `prefix` (all removed), and
        what the kernel maps that `status` does not know: one line each."""
        report = self.report()
        left = [f"{d['name']} ({d['snapshot']['key']}): {d['state']}"
                for d in report["devices"]
                if d["snapshot"] is not None and d["snapshot"]["key"].startswith(prefix)]
        known = {d["kernel_name"] for d in report["devices"]}
        left += [f"{name}: mapped, not in status"
                 for name in sorted(self.world.kernel_names() - known)]
        orphans = report["orphans"]
        if orphans["thin_ids"] or orphans["devices"]:
            left.append(f"orphans: {orphans}")
        return left

    def client(self, prefix: str, work: Path) -> Client:
        """A client of one case, under `prefix`, mounting under `work`."""
        return Client(self.socket, self.fs_type, prefix, work, Ledger())

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
                 lambda: socket.is_socket() or process.poll() is not None, START_TIMEOUT)
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


def finish(case: Client, daemon: Daemon, faulty_before: set[str]) -> list[str]:
    """The end of a case: everything it made unmounted and removed; what could not be, and
    any device that became Faulty meanwhile."""
    problems = case.clean_up()
    new_faulty = daemon.faulty() - faulty_before
    if new_faulty:
        problems.append(f"Faulty devices: {sorted(new_faulty)}")
    return problems


@pytest.fixture
def client(daemon: Daemon, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Client]:
    """A client for one case; at its end everything the case made is unmounted and removed,
    and no device may have become Faulty meanwhile."""
    faulty_before = daemon.faulty()
    prefix = "".join(c if c.isalnum() or c in "-_." else "-" for c in request.node.name)
    case = daemon.client(prefix, tmp_path)
    yield case
    problems = finish(case, daemon, faulty_before)
    assert not problems, "\n".join(problems) + "\n" + daemon.logs()


# -- containerd 2.3.4's suite, serially and all at once ----------------------------------------


@pytest.mark.parametrize("case", [name for name in CASES if name != DEEP])
def test_suite_case(client: Client, case: str) -> None:
    """One case of containerd 2.3.4's snapshotter suite, alone on the daemon."""
    start = time.monotonic()
    CASES[case](client)
    record_times({"fs_type": client.fs_type, "case": case,
                  "seconds": round(time.monotonic() - start, 1)})


def record_times(times: dict[str, Any]) -> None:
    """Append wall times to RECONCILER_CONFORMANCE_TIMES, when it is set."""
    if TIMES:
        with open(TIMES, "a") as out:
            out.write(json.dumps(times) + "\n")


@dataclass
class CaseRun:
    """One case of a batch: its wall time and what went wrong (nothing: it passed)."""

    name: str
    seconds: float
    problems: list[str]


def run_case(daemon: Daemon, name: str, work: Path) -> CaseRun:
    """A case as the batch runs it: a client of its own, cleaned up after, timed."""
    start = time.monotonic()
    problems: list[str] = []
    work.mkdir()
    try:
        case = daemon.client(f"batch-{name}", work)
    except Exception:  # noqa: BLE001 - reported with the case's name
        return CaseRun(name, time.monotonic() - start, [traceback.format_exc()])
    try:
        CASES[name](case)
    except Exception:  # noqa: BLE001 - reported with the case's name
        problems.append(traceback.format_exc())
    # The case's own time, as test_suite_case measures it (its clean-up left out).
    seconds = time.monotonic() - start
    problems += case.clean_up()
    return CaseRun(name, seconds, problems)


def test_suite_cases_all_at_once(daemon: Daemon, tmp_path: Path) -> None:
    """All 21 cases at once against the one daemon (2.x's t.Parallel()), the 128-layer
    case among them: each passes; then no device is Faulty and none is left behind (the
    kernel maps nothing `status` does not know)."""
    faulty_before = daemon.faulty()
    start = time.monotonic()
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="case") as pool:
        runs = list(pool.map(lambda name: run_case(daemon, name, tmp_path / name), CASES))
    wall = time.monotonic() - start
    times = {"fs_type": daemon.fs_type, "workers": WORKERS, "wall_seconds": round(wall, 1),
             "cases": {r.name: round(r.seconds, 1) for r in runs}}
    record_times(times)
    failed = {r.name: r.problems for r in runs if r.problems}
    assert not failed, "\n".join(f"--- {name}\n" + "\n".join(problems)
                                 for name, problems in failed.items()) + "\n" + daemon.logs()
    new_faulty = daemon.faulty() - faulty_before
    assert not new_faulty, f"Faulty devices: {sorted(new_faulty)}\n{daemon.logs()}"
    wait_for("every device of the batch gone, none mapped unknown",
             lambda: not daemon.leaks("batch-"))


# -- cases of our own --------------------------------------------------------------------------


@contextmanager
def mounted_by_command(client: Client, mounts: list[Any]) -> Iterator[Path]:
    """Mounted for the block with mount(8), unmounted after."""
    target = client.mount_command(mounts)
    try:
        yield target
    finally:
        client.umount(target)


def write(path: Path, text: str) -> None:
    """Write a file, making its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


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
    with mounted_by_command(client, [base]) as root:
        write(root / "f", "data\n")
    client.commit("committed", "base")
    (view,) = client.view("view", "committed")
    (child,) = client.prepare("child", "committed")
    (committed,) = client.mounts("committed")
    assert set(view.options) == {"ro", *extra, *ro_extra}, list(view.options)
    assert set(committed.options) == {"ro", *extra, *ro_extra}, list(committed.options)
    assert set(child.options) == {"rw", *extra}, list(child.options)
    with mounted_by_command(client, [view]) as a, \
            mounted_by_command(client, [committed]) as b, \
            mounted_by_command(client, [child]) as c:
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


def test_hard_links_and_symlinks(client: Client) -> None:
    """Hard links stay one inode across layers (added to and unlinked in upper layers);
    relative, absolute, dangling and directory symlinks keep their targets."""
    def symlinks(root: Path) -> None:
        (root / "rel").symlink_to("a")
        (root / "abs").symlink_to("/a")
        (root / "dangling").symlink_to("nowhere")
        (root / "dirlink").symlink_to("dir")

    check_snapshots(
        client,
        apply(create_file("/a", b"shared inode\n", 0o644), link("/a", "/b"),
              create_dir("/dir", 0o755), symlinks),
        apply(link("/b", "/dir/c"), lambda root: (root / "dir/up").symlink_to("../b")),
        apply(remove_all("/a")))


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


USAGE_MIB = 4


def test_usage_of_a_committed_layer_is_what_it_wrote(client: Client, daemon: Daemon) -> None:
    """4 MiB of random data written into an active snapshot, then Commit: Usage of the
    committed layer says at least 4 MiB, asked right after the Commit or only after a child
    was taken from it (the child shares the layer's blocks: the layer is measured first).
    Commit measures nothing (the daemon logs no measurement); the Usage measures both layers
    in one go."""
    def measurements() -> int:
        return daemon.log.read_text(errors="replace").count("snapshot.usage_measured")

    before = measurements()
    for name in ("asked", "child-first"):
        with client.mounted(client.prepare(f"{name}-active")) as root, \
                (root / "random").open("wb") as out:
            out.write(os.urandom(USAGE_MIB * MIB))
            out.flush()
            os.fsync(out.fileno())
        client.commit(f"{name}-layer", f"{name}-active")
    assert measurements() == before, "Commit measured a layer"
    client.prepare("child", "child-first-layer")
    assert measurements() == before + 1, "the child's Prepare measured its parent first"
    for name in ("asked", "child-first"):
        usage = client.usage(f"{name}-layer")
        assert usage.size >= USAGE_MIB * MIB, (name, usage)
    assert measurements() == before + 1, "both layers measured by the child's Prepare"
    assert client.usage("child").size < MIB, "the child wrote nothing of its own"


def layer_files(tag: str) -> Change:
    """One layer of an image: a file of its own, and a file every layer overwrites."""
    def change(root: Path) -> None:
        (root / f"layer-{tag}").write_text(f"{tag}\n")
        (root / "shared").write_text(f"last written by {tag}\n")
    return change


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
            check_directory_equal(reference, root)
