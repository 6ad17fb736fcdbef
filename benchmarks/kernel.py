"""Kernel benchmark, on a real kernel (the VM when this host has no device-mapper):

    .venv/bin/python benchmarks/kernel.py [--n 100] [--only a,b,c,d,e] [--json out/kernel.json]

N thin devices are made and activated, snapshotted (and the snapshots activated) and removed by
  (a) bare libdevmapper calls in a loop (in-process, ctypes, nothing of ours: only the kernel
      calls, and with udev running the cookie wait its /dev/mapper nodes need): the floor
  (a2) the same loop through our LibdmClient (its udev checks, error capture and waits)
  (ab) the bare calls again, each phase's sharing one udev cookie waited for once: the floor
       for a pass that makes many devices, which shares one wait the same way
  (b) raw `dmsetup` processes in a loop
  (c) our reconciler, with each driver (spec files, filesystem "none", run until settled)
  (d) LVM: lvcreate/lvremove on a thin pool over the same kind of loop devices
and (e) containerd 1.6's own devmapper snapshotter and our gRPC snapshotter, both driven by one
in-process gRPC client through containerd's snapshots service: root Prepare (no parent),
Prepare (a child of a committed layer), Commit, Remove, with p50 and p99 per call;
and (f) our gRPC snapshotter at depth: a chain of --depth committed layers (Prepare, Commit),
then Prepare (and Remove) of a child of layer 1 and of the top layer, alternately; the ratio
of the two p50s says whether a Prepare's cost grows with the chain;
(g) containerd's own benchmark shape (its core/snapshots/benchsuite: 16 layers of 10 files of
1 MiB, Prepare, mount + write + unmount, Commit; --iterations) against containerd 2.3.4's
devmapper and us through its proxy, udevd running (benchmarks/containerd_suite.py);
(h) the bare floor at the process level: a bare libdevmapper process against `run --once`,
N devices, without udev and then with it (benchmarks/floor.py);
(i) a snapshot's activation under each way of meeting udev, and whether by-label links follow
(benchmarks/udev_modes.py).
Prints tables with ratios against (a) and (ab), (e) and depth 1, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

SECTORS_PER_DEVICE = 2048 * 64  # 64 MiB
POOL_SECTORS = 2 * 1024 * 1024 * 8  # 8 GiB


def in_kernel() -> bool:
    try:
        return any(line.split()[-1:] == ["device-mapper"]
                   for line in Path("/proc/misc").read_text().splitlines())
    except OSError:
        return False


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


@dataclass
class Phase:
    """Seconds per device of create+activate, snapshot (+activate), remove."""

    name: str
    create: list[float] = field(default_factory=list)
    snapshot: list[float] = field(default_factory=list)
    remove: list[float] = field(default_factory=list)
    note: str = ""

    def per_device_ms(self) -> dict[str, float]:
        return {k: round(statistics.mean(v) * 1000, 2) if v else float("nan")
                for k, v in (("create", self.create), ("snapshot", self.snapshot),
                             ("remove", self.remove))}


@contextmanager
def loop_pool(name: str, work: Path) -> Iterator[tuple[str, str]]:
    """A thin-pool `name` over two sparse files on loop devices: (metadata loop, data loop)."""
    meta, data = work / f"{name}.meta", work / f"{name}.data"
    with meta.open("wb") as f:
        f.truncate(64 << 20)
    with data.open("wb") as f:
        f.truncate(POOL_SECTORS * 512)
    meta_loop = sh("losetup", "-f", "--show", str(meta)).stdout.strip()
    data_loop = sh("losetup", "-f", "--show", str(data)).stdout.strip()
    try:
        yield meta_loop, data_loop
    finally:
        sh("losetup", "-d", meta_loop, check=False)
        sh("losetup", "-d", data_loop, check=False)
        # /tmp is RAM in the VM: what the pool wrote goes with its files.
        meta.unlink(missing_ok=True)
        data.unlink(missing_ok=True)


def pool_table(meta: str, data: str) -> str:
    return f"0 {POOL_SECTORS} thin-pool {meta} {data} 128 32768 1 skip_block_zeroing"


def raw_loop(n: int, work: Path, client: Any, label: str) -> Phase:
    """create_thin + create, create_snap (origin suspended) + create, remove + delete."""
    phase = Phase(label)
    pool = f"b{secrets.token_hex(3)}"
    with loop_pool(pool, work) as (meta, data):
        client.create(pool, pool_table(meta, data), f"BENCH-{pool}")
        try:
            for i in range(n):
                started = time.perf_counter()
                client.message(pool, ["create_thin", str(i)])
                client.create(f"{pool}-t{i}", f"0 {SECTORS_PER_DEVICE} thin /dev/mapper/{pool} {i}",
                              f"BENCH-{pool}-{i}")
                phase.create.append(time.perf_counter() - started)
            for i in range(n):
                started = time.perf_counter()
                client.suspend(f"{pool}-t{i}")
                client.message(pool, ["create_snap", str(n + i), str(i)])
                client.resume(f"{pool}-t{i}")
                client.create(f"{pool}-s{i}",
                              f"0 {SECTORS_PER_DEVICE} thin /dev/mapper/{pool} {n + i}",
                              f"BENCH-{pool}-{n + i}")
                phase.snapshot.append(time.perf_counter() - started)
            for i in range(2 * n):
                name = f"{pool}-t{i}" if i < n else f"{pool}-s{i - n}"
                started = time.perf_counter()
                remove_retrying(client, name)
                client.message(pool, ["delete", str(i)])
                phase.remove.append(time.perf_counter() - started)
        finally:
            remove_retrying(client, pool)
    return phase


def bare_batched(n: int, work: Path, bare: BareLibdm, label: str) -> Phase:
    """The bare loop's calls, each phase's sharing one udev cookie waited for at its end."""
    phase = Phase(label)
    pool = f"b{secrets.token_hex(3)}"
    table = lambda i: f"0 {SECTORS_PER_DEVICE} thin /dev/mapper/{pool} {i}"  # noqa: E731
    with loop_pool(pool, work) as (meta, data):
        bare.create(pool, pool_table(meta, data), f"BENCH-{pool}")
        try:
            started = time.perf_counter()
            with bare.batch():
                for i in range(n):
                    bare.message(pool, ["create_thin", str(i)])
                    bare.create(f"{pool}-t{i}", table(i), f"BENCH-{pool}-{i}")
            phase.create = [(time.perf_counter() - started) / n] * n
            started = time.perf_counter()
            with bare.batch():
                for i in range(n):
                    bare.suspend(f"{pool}-t{i}")
                    bare.message(pool, ["create_snap", str(n + i), str(i)])
                    bare.resume(f"{pool}-t{i}")
                    bare.create(f"{pool}-s{i}", table(n + i), f"BENCH-{pool}-{n + i}")
            phase.snapshot = [(time.perf_counter() - started) / n] * n
            started = time.perf_counter()
            with bare.batch():
                for i in range(2 * n):
                    remove_retrying(bare, f"{pool}-t{i}" if i < n else f"{pool}-s{i - n}")
                    bare.message(pool, ["delete", str(i)])
            phase.remove = [(time.perf_counter() - started) / (2 * n)] * (2 * n)
        finally:
            remove_retrying(bare, pool)
    return phase


class BareLibdm:
    """The floor: exactly the kernel calls, through libdevmapper's C functions and nothing of
    ours. With udev running, each create, resume and remove carries a cookie and waits on it
    (dm_udev_wait blocks on the semaphore udev releases: what correctness needs for the
    /dev/mapper node); without udev, libdevmapper makes the node itself."""

    def __init__(self) -> None:
        from reconciler.dm.libdm import load_libdm
        from reconciler.dm.udev import udev_running

        self.lib: Any = load_libdm()
        self.udev = udev_running()
        self.lib.dm_udev_set_sync_support(1 if self.udev else 0)
        # Inside `batch`: the cookie every create/resume/remove shares, waited for once.
        self.shared: Any = None

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The calls within share one udev cookie, waited for once at the end: the floor for
        a pass that makes many devices (what our daemon's one wait per pass is measured by)."""
        import ctypes

        self.shared = ctypes.c_uint32(0)
        try:
            yield
        finally:
            cookie, self.shared = self.shared.value, None
            self.lib.dm_udev_wait(cookie)

    def _run(self, kind: int, name: str, *, table: tuple[int, str, str] | None = None,
             uuid: str | None = None, message: str | None = None,
             cookie: bool = False) -> None:
        from bare_dm import run_task  # beside this file: the process-level floor's own

        try:
            run_task(self.lib, kind, name, shared=self.shared, table=table, uuid=uuid,
                     message=message, cookie=cookie)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, name) from exc

    def message(self, pool: str, words: list[str]) -> None:
        from reconciler.dm.libdm import DM_DEVICE_TARGET_MSG

        self._run(DM_DEVICE_TARGET_MSG, pool, message=" ".join(words))

    def create(self, name: str, table: str, uuid: str) -> None:
        from reconciler.dm.libdm import DM_DEVICE_CREATE

        start, length, target, params = table.split(maxsplit=3)
        assert start == "0"
        self._run(DM_DEVICE_CREATE, name, table=(int(length), target, params), uuid=uuid,
                  cookie=True)

    def suspend(self, name: str) -> None:
        from reconciler.dm.libdm import DM_DEVICE_SUSPEND

        self._run(DM_DEVICE_SUSPEND, name)

    def resume(self, name: str) -> None:
        from reconciler.dm.libdm import DM_DEVICE_RESUME

        self._run(DM_DEVICE_RESUME, name, cookie=True)

    def remove(self, name: str) -> None:
        import errno as errnos

        from reconciler.dm.errors import DeviceBusy
        from reconciler.dm.libdm import DM_DEVICE_REMOVE

        try:
            self._run(DM_DEVICE_REMOVE, name, cookie=True)
        except OSError as exc:
            if exc.errno == errnos.EBUSY:
                raise DeviceBusy(f"remove {name}") from exc
            raise


def remove_retrying(client: Any, name: str) -> None:
    """udev may still hold a node just made: EBUSY once, as the guide warns."""
    from reconciler.dm.errors import DeviceBusy

    for attempt in range(50):
        try:
            client.remove(name)
            return
        except DeviceBusy:
            if attempt == 49:
                raise
            time.sleep(0.02)


def reconciler_loop(n: int, work: Path, driver: str) -> Phase:
    """Our reconciler in-process: N spec files, then N snapshot specs, then no specs."""
    from reconciler.config import settings_from_mapping
    from reconciler.daemon.once import run_until_settled
    from reconciler.dm.host import SystemHost
    from reconciler.reconcile.reconciler import Reconciler
    from reconciler.store import Store

    phase = Phase(f"(c) reconciler, {driver}")
    pool = f"r{secrets.token_hex(3)}"
    root = work / pool
    settings = settings_from_mapping({
        "root_path": str(root), "pool_name": pool, "dm_driver": driver,
        "loopback_data_size": "8GiB", "loopback_metadata_size": "64MiB",
        "base_image_size": "64MiB", "retry_initial": "50ms", "retry_max": "1s"})
    settings.specs_path.mkdir(parents=True)
    store = Store(settings.database_path, time.time)
    host = SystemHost()
    # Every spec file goes at once in the remove phase: an operator's confirmed removal.
    engine = Reconciler(settings, host, store, allow_removals=True)
    assert run_until_settled(engine, time.time, time.sleep).ok  # the pool itself
    try:
        def timed(bucket: list[float], change: Callable[[], None]) -> None:
            change()
            started = time.perf_counter()
            result = run_until_settled(engine, time.time, time.sleep)
            assert result.ok, result
            bucket.extend([(time.perf_counter() - started) / n] * n)

        timed(phase.create, lambda: [
            (settings.specs_path / f"d{i}.toml").write_text('filesystem = "none"\n')
            for i in range(n)])
        timed(phase.snapshot, lambda: [
            (settings.specs_path / f"s{i}.toml").write_text(f'parent = "d{i}"\n')
            for i in range(n)])
        timed(phase.remove, lambda: [p.unlink() for p in settings.specs_path.iterdir()])
        # Removing 2N devices: per device removed, as in the raw loops.
        phase.remove = [t / 2 for t in phase.remove] * 2
    finally:
        store.close()
        sh("dmsetup", "remove", pool, check=False)
        for path in sorted((root / "loopback").glob("*")):
            for loop in sh("losetup", "-j", str(path), check=False).stdout.splitlines():
                sh("losetup", "-d", loop.split(":")[0], check=False)
    return phase


def lvm_loop(n: int, work: Path) -> Phase:
    """lvcreate -V (thin LV, activated), lvcreate -s (thin snapshot, activated), lvremove."""
    phase = Phase("(d) LVM lvcreate/lvremove")
    if shutil.which("lvcreate") is None:
        phase.note = "lvm2 not installed"
        return phase
    vg = f"bench{secrets.token_hex(2)}"
    data = work / f"{vg}.pv"
    with data.open("wb") as f:
        f.truncate(POOL_SECTORS * 512 + (256 << 20))
    loop = sh("losetup", "-f", "--show", str(data)).stdout.strip()
    # Only our loop device, no udev wait (the VM's udev may not tag LVM's nodes).
    config = ("devices { filter = [ \"a|^" + loop + "$|\", \"r|.*|\" ] } "
              "activation { udev_sync = 0 udev_rules = 0 }")
    lvm = ("--config", config)
    try:
        sh("pvcreate", *lvm, "-q", loop)
        sh("vgcreate", *lvm, "-q", vg, loop)
        sh("lvcreate", *lvm, "-q", "--type", "thin-pool", "-L", "8G", "--poolmetadatasize",
           "64M", "--zero", "n", "-n", "pool", vg)
        for i in range(n):
            started = time.perf_counter()
            sh("lvcreate", *lvm, "-q", "-V", "64M", "-T", f"{vg}/pool", "-n", f"t{i}")
            phase.create.append(time.perf_counter() - started)
        for i in range(n):
            started = time.perf_counter()
            sh("lvcreate", *lvm, "-q", "-kn", "-s", f"{vg}/t{i}", "-n", f"s{i}")
            phase.snapshot.append(time.perf_counter() - started)
        for name in [f"s{i}" for i in range(n)] + [f"t{i}" for i in range(n)]:
            started = time.perf_counter()
            sh("lvremove", *lvm, "-q", "-y", f"{vg}/{name}")
            phase.remove.append(time.perf_counter() - started)
    finally:
        sh("vgremove", *lvm, "-q", "-y", "-f", vg, check=False)
        sh("losetup", "-d", loop, check=False)
    return phase


SNAPSHOTTER_OPS = ("root", "prepare", "commit", "remove")


@dataclass
class SnapshotterRun:
    name: str
    root: list[float] = field(default_factory=list)
    prepare: list[float] = field(default_factory=list)
    commit: list[float] = field(default_factory=list)
    remove: list[float] = field(default_factory=list)

    def stats(self) -> dict[str, dict[str, float]]:
        out = {}
        for op in SNAPSHOTTER_OPS:
            values = sorted(getattr(self, op))
            out[op] = {"p50_ms": round(statistics.median(values) * 1000, 1),
                       "p99_ms": round(values[max(0, int(len(values) * 0.99) - 1)] * 1000, 1)}
        return out


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a minute."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def remove_devices(pool: str) -> None:
    """The pool's thin devices, then the pool."""
    for line in sh("dmsetup", "ls", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{pool}-"):
            sh("dmsetup", "remove", name, check=False)
    sh("dmsetup", "remove", pool, check=False)


def wait_for_socket(sock: Path, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Until `process` serves `sock`; RuntimeError naming its log if it dies or 300 s pass."""
    deadline = time.monotonic() + 300
    while not sock.is_socket():
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"{what} did not start: see {log}")
        time.sleep(0.2)


@contextmanager
def our_daemon(base: Path, pool: str, extra: str = "") -> Iterator[Path]:
    """`reconciler run` (libdevmapper, its own loopback pool `pool`, `extra` config lines)
    serving a socket in `base`; stopped and its devices removed on the way out."""
    sock = base / "ours.sock"
    (base / "reconciler.toml").write_text(
        f'root_path = "{base}/reconciler"\npool_name = "{pool}"\nbase_image_size = "64MiB"\n'
        f'loopback_data_size = "8GiB"\nloopback_metadata_size = "64MiB"\n'
        f'grpc_socket = "{sock}"\ndm_driver = "libdevmapper"\n{extra}')
    ours = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "-c",
                             str(base / "reconciler.toml"), "run"],
                            stdout=(base / "ours.log").open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for_socket(sock, ours, "our daemon", base / "ours.log")
        yield sock
    finally:
        stop(ours)
        remove_devices(pool)


def snapshotters(n: int, work: Path) -> list[SnapshotterRun]:
    """containerd's devmapper and ours, through containerd's snapshots service."""
    import grpc

    from reconciler.api.proto import snapshots_pb2 as pb
    from reconciler.api.proto import snapshots_pb2_grpc

    if shutil.which("containerd") is None:
        return []
    base = work / "ctd"
    base.mkdir()
    with loop_pool("ctdpool", work) as (meta, data), our_daemon(base, "ours") as ours_sock:
        sh("dmsetup", "create", "ctdpool", "--table", pool_table(meta, data))
        ctd_sock = base / "containerd.sock"
        (base / "containerd.toml").write_text(
            f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{ctd_sock}"\n'
            '[plugins."io.containerd.snapshotter.v1.devmapper"]\n'
            f'  pool_name = "ctdpool"\n  root_path = "{base}/devmapper"\n'
            '  base_image_size = "64MB"\n'
            f'[proxy_plugins]\n  [proxy_plugins.reconciler]\n    type = "snapshot"\n'
            f'    address = "{ours_sock}"\n')
        ctd = subprocess.Popen(["containerd", "--config", str(base / "containerd.toml")],
                               stdout=(base / "containerd.log").open("w"),
                               stderr=subprocess.STDOUT)
        try:
            wait_for_socket(ctd_sock, ctd, "containerd", base / "containerd.log")
            channel = grpc.insecure_channel(f"unix:{ctd_sock}")
            stub = snapshots_pb2_grpc.SnapshotsStub(channel)  # type: ignore[no-untyped-call]
            meta_ns = (("containerd-namespace", "bench"),)
            # Without a lease or this label containerd's garbage collector removes a
            # snapshot nothing references (ctr sets it too).
            root = {"containerd.io/gc.root": "bench"}
            runs = []
            for name in ("devmapper", "reconciler"):
                run = SnapshotterRun(name)

                def call(method: Any, request: Any) -> float:
                    started = time.perf_counter()
                    method(request, metadata=meta_ns, timeout=600)
                    return time.perf_counter() - started

                call(stub.Prepare, pb.PrepareSnapshotRequest(snapshotter=name, key="base",
                                                            labels=root))
                call(stub.Commit, pb.CommitSnapshotRequest(snapshotter=name, name="layer",
                                                           key="base", labels=root))
                for i in range(n):
                    run.prepare.append(call(stub.Prepare, pb.PrepareSnapshotRequest(
                        snapshotter=name, key=f"k{i}", parent="layer", labels=root)))
                    run.commit.append(call(stub.Commit, pb.CommitSnapshotRequest(
                        snapshotter=name, name=f"c{i}", key=f"k{i}", labels=root)))
                for i in range(n):
                    run.remove.append(call(stub.Remove, pb.RemoveSnapshotRequest(
                        snapshotter=name, key=f"c{i}")))
                call(stub.Remove, pb.RemoveSnapshotRequest(snapshotter=name, key="layer"))
                # Root Prepares (no parent): an empty filesystem each, the mkfs path.
                for i in range(n):
                    run.root.append(call(stub.Prepare, pb.PrepareSnapshotRequest(
                        snapshotter=name, key=f"r{i}", labels=root)))
                for i in range(n):
                    call(stub.Remove, pb.RemoveSnapshotRequest(snapshotter=name, key=f"r{i}"))
                runs.append(run)
            channel.close()
            return runs
        finally:
            stop(ctd)
            remove_devices("ctdpool")


def depth_run(depth: int, samples: int, work: Path) -> dict[str, Any]:
    """Prepare of a child of layer 1 and of layer `depth`, straight to our daemon's socket."""
    import grpc

    from reconciler.api.proto import snapshots_pb2 as pb
    from reconciler.api.proto import snapshots_pb2_grpc

    base = work / "depth"
    base.mkdir()
    with our_daemon(base, "deep") as sock:
        channel = grpc.insecure_channel(f"unix:{sock}")
        stub = snapshots_pb2_grpc.SnapshotsStub(channel)  # type: ignore[no-untyped-call]
        parent = ""
        for level in range(1, depth + 1):
            stub.Prepare(pb.PrepareSnapshotRequest(key=f"k{level}", parent=parent), timeout=600)
            stub.Commit(pb.CommitSnapshotRequest(name=f"l{level}", key=f"k{level}"),
                        timeout=600)
            parent = f"l{level}"
        times: dict[int, list[float]] = {1: [], depth: []}
        for i in range(samples):
            for level in (1, depth):
                started = time.perf_counter()
                stub.Prepare(pb.PrepareSnapshotRequest(key=f"p{level}-{i}", parent=f"l{level}"),
                             timeout=600)
                times[level].append(time.perf_counter() - started)
                stub.Remove(pb.RemoveSnapshotRequest(key=f"p{level}-{i}"), timeout=600)
        channel.close()
    p50 = {level: round(statistics.median(values) * 1000, 1) for level, values in times.items()}
    return {"depth": depth, "samples": samples, "prepare_p50_ms_depth_1": p50[1],
            f"prepare_p50_ms_depth_{depth}": p50[depth], "ratio": round(p50[depth] / p50[1], 2)}


def print_phases(phases: list[Phase]) -> list[dict[str, Any]]:
    floor = phases[0].per_device_ms() if phases else {}
    # The floor for a pass of many devices: the bare calls with one udev wait per phase.
    batched = next((p.per_device_ms() for p in phases if p.name.startswith("(ab)")), {})
    rows = []
    print(f"{'per device, ms':34} {'create+act':>11} {'snapshot':>11} {'remove':>11}   "
          f"ratio to (a){'   ratio to (ab)' if batched else ''}")
    for phase in phases:
        ms = phase.per_device_ms()
        ratios = []
        for reference in (floor, batched):
            if reference:
                ratios.append(" ".join(f"{ms[k] / reference[k]:.1f}x" if reference.get(k)
                                       else "-" for k in ("create", "snapshot", "remove")))
        print(f"{phase.name:34} {ms['create']:>11} {ms['snapshot']:>11} {ms['remove']:>11}   "
              f"{'   '.join(ratios)} {phase.note}")
        rows.append({"name": phase.name, "per_device_ms": ms, "note": phase.note})
    return rows


def print_snapshotters(runs: list[SnapshotterRun]) -> list[dict[str, Any]]:
    rows = []
    if not runs:
        return rows
    reference = runs[0].stats()
    print(f"\n{'through containerd, ms':24} {'root Prepare p50/p99':>20} "
          f"{'Prepare p50/p99':>17} {'Commit p50/p99':>17} {'Remove p50/p99':>17}"
          "   p50 ratio to (e) devmapper")
    for run in runs:
        stats = run.stats()
        cells = [f"{stats[op]['p50_ms']}/{stats[op]['p99_ms']}" for op in SNAPSHOTTER_OPS]
        ratio = " ".join(f"{stats[op]['p50_ms'] / reference[op]['p50_ms']:.2f}x"
                         for op in SNAPSHOTTER_OPS)
        print(f"{run.name:24} {cells[0]:>20} {cells[1]:>17} {cells[2]:>17} {cells[3]:>17}"
              f"   {ratio}")
        rows.append({"name": run.name, **stats})
    return rows


def issue26_sections(only: set[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Sections (h), then (g) and (i) with udevd running; each prints its table."""
    import containerd_suite
    import floor
    import udev_modes

    out: dict[str, Any] = {}
    if "h" in only:
        # First: its rows without udev need a VM where udevd was never started.
        out["floor"] = floor.print_floor(floor.floor_rows(args.n, work))
    if "g" in only or "i" in only:
        with floor.udevd() as running:
            print(f"\nudevd {'running' if running else 'NOT running'}", flush=True)
            if "i" in only:
                out["udev_modes"] = udev_modes.print_modes(udev_modes.mode_runs(args.samples,
                                                                                 work))
            if "g" in only:
                out["suite"] = containerd_suite.print_suite(
                    containerd_suite.suite_runs(args.iterations, work, args.variants))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--only", default="a,b,c,d,e,f")
    parser.add_argument("--depth", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=3, help="(g)'s iterations")
    parser.add_argument("--samples", type=int, default=20, help="(i)'s activations per mode")
    parser.add_argument("--variants", type=int, default=3,
                        help="(g)'s variants of ours: 1 is ours as it comes, 3 every one")
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "kernel.json")
    args = parser.parse_args()
    if not in_kernel() and not os.environ.get("RECONCILER_IN_VM"):
        # Boot the VM once and run this very command inside it, with out/ writable.
        args.json.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.call([str(ROOT / "scripts" / "vm"), "--rwdir", str(args.json.parent),
                                "--", sys.executable, "-u", __file__, "--n", str(args.n), "--only",
                                args.only, "--depth", str(args.depth), "--iterations",
                                str(args.iterations), "--samples", str(args.samples),
                                "--variants", str(args.variants), "--json", str(args.json)])
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="kbench-", dir="/tmp"))
    phases: list[Phase] = []
    if "a" in only:
        from reconciler.dm.libdm import LibdmClient
        bare = BareLibdm()
        phases.append(raw_loop(args.n, work, bare,
                               f"(a) bare libdevmapper (floor{', udev' if bare.udev else ''})"))
        phases.append(raw_loop(args.n, work, LibdmClient(), "(a2) our LibdmClient in a loop"))
        phases.append(bare_batched(args.n, work, bare,
                                   "(ab) bare, one udev wait per phase"))
    if "b" in only:
        from reconciler.dm.client import DmClient
        from reconciler.dm.host import SystemHost
        phases.append(raw_loop(args.n, work, DmClient(SystemHost()), "(b) raw dmsetup"))
    if "c" in only:
        phases.append(reconciler_loop(args.n, work, "libdevmapper"))
        phases.append(reconciler_loop(args.n, work, "dmsetup"))
    if "d" in only:
        phases.append(lvm_loop(args.n, work))
    print(f"N = {args.n} devices; kernel {platform.release()}; {os.cpu_count()} CPUs; "
          f"{'VM (TCG)' if os.environ.get('RECONCILER_IN_VM') else 'host'}\n")
    rows = print_phases(phases)
    runs = snapshotters(args.n, work) if "e" in only else []
    snap_rows = print_snapshotters(runs)
    deep = depth_run(args.depth, max(5, min(args.n, 20)), work) if "f" in only else None
    if deep is not None:
        print(f"\n(f) our Prepare at depth 1 vs {args.depth} (p50 of {deep['samples']}, ms): "
              f"{deep['prepare_p50_ms_depth_1']} vs {deep[f'prepare_p50_ms_depth_{args.depth}']}"
              f"  ratio {deep['ratio']}x")
    issue26 = issue26_sections(only, args, work)
    commit = sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD", check=False).stdout
    document = {"n": args.n, "kernel": platform.release(), "commit": commit.strip(),
                "in_vm": bool(os.environ.get("RECONCILER_IN_VM")), "phases": rows,
                "snapshotters": snap_rows, "depth": deep, **issue26}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
