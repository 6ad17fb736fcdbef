"""Section (g) of benchmarks/kernel.py: containerd's own snapshotter benchmark shape (its
`core/snapshots/benchsuite`, issue 26), through containerd 2.3.4's snapshots service.

16 layers, each 10 files of 1 MiB created, updated (4 bytes in the middle) or removed by the
pattern that suite uses; per layer: Prepare (a child of the previous committed layer, the very
first a root), mount + write + unmount (mount(8) of the mounts Prepare returned), Commit;
--iterations times over one chain. Against containerd 2.3.4's devmapper (in containerd, on a
thin-pool over loop files, ext4, base_image_size 64MiB) and against our daemon through
containerd's proxy plugin, one containerd each, in one VM run; our variants (another pool, mkfs
options) say where a difference comes from. Prints the totals per iteration, MB/s as Go's
benchmark counts them (160 MiB written per iteration) and the ratio to devmapper.
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAYERS = 16
FILES = "abcdefghij"
FILE_BYTES = 1 << 20
BASE_SIZE = "64MiB"
TARBALL = Path("shared/containerd-2.3.4/containerd-2.3.4-linux-amd64.tar.xz")
NAMESPACE = (("containerd-namespace", "bench"),)
# Without a lease or this label containerd's garbage collector removes what nothing references.
GC_ROOT = {"containerd.io/gc.root": "bench"}
# containerd's devmapper mkfs.ext4 options when fs_options is empty (its snapshotter.go).
DEVMAPPER_MKFS = ("-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0")


class FileOp(enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    REMOVE = "remove"


C, U, R = FileOp.CREATE, FileOp.UPDATE, FileOp.REMOVE
# The benchsuite's three layer patterns (its makeApplier), in its order (e after f in one).
_EVERY_THIRD = ((U, "a"), (U, "b"), (C, "c"), (U, "d"), (C, "f"), (U, "e"), (R, "g"),
                (C, "h"), (U, "i"), (C, "j"))
_EVEN = ((U, "a"), (C, "b"), (R, "c"), (C, "d"), (U, "e"), (R, "f"), (C, "g"), (U, "h"),
         (C, "i"), (U, "j"))
_OTHER = tuple((C, name) for name in FILES)


def layer_ops(index: int) -> list[tuple[FileOp, str]]:
    """What layer `index` (1-based) does to each file, as the benchsuite's makeApplier."""
    return list(_EVERY_THIRD if index % 3 == 0 else _EVEN if index % 2 == 0 else _OTHER)


def apply_layer(root: Path, ops: list[tuple[FileOp, str]], contents: list[bytes]) -> None:
    """Create (mode 0777), update 4 bytes at the middle, or remove each file."""
    for (op, name), content in zip(ops, contents, strict=True):
        path = root / name
        if op is FileOp.CREATE:
            path.write_bytes(content)
            path.chmod(0o777)
        elif op is FileOp.UPDATE:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, content[:4], os.fstat(fd).st_size // 2)
            finally:
                os.close(fd)
        else:
            path.unlink(missing_ok=True)


@dataclass
class Iteration:
    prepare: float = 0.0
    write: float = 0.0
    commit: float = 0.0

    @property
    def whole(self) -> float:
        return self.prepare + self.write + self.commit


@dataclass
class SuiteRun:
    name: str
    iterations: list[Iteration] = field(default_factory=list)
    # The first Prepare'd filesystem and the pool, as found (where a difference comes from).
    notes: dict[str, str] = field(default_factory=dict)


def mount_argv(mounts: Any, target: Path) -> list[str]:
    """mount(8) of the one mount a thin snapshotter returns."""
    assert len(mounts) == 1, mounts
    mount = mounts[0]
    options = ["-o", ",".join(mount.options)] if mount.options else []
    return ["mount", "-t", mount.type, *options, mount.source, str(target)]


def describe_filesystem(source: str) -> str:
    """Block size, groups and how many have their inode table zeroed (lazy init), features."""
    from kernel import sh

    text = sh("dumpe2fs", source, check=False).stdout
    groups = sum(1 for line in text.splitlines() if line.startswith("Group "))
    zeroed = text.count("ITABLE_ZEROED")
    fields = dict(line.split(":", 1) for line in text.splitlines()
                  if ":" in line and not line.startswith((" ", "Group")))
    return (f"block {fields.get('Block size', '?').strip()}, {groups} groups, "
            f"{zeroed} inode tables zeroed, features:{fields.get('Filesystem features', '?')}"
            f", mount options:{fields.get('Default mount options', '?')}")


def run_suite(stub: Any, snapshotter: str, iterations: int, work: Path) -> SuiteRun:
    """The benchsuite's loop through containerd's snapshots service."""
    from kernel import sh

    from reconciler.api.proto import snapshots_pb2 as pb

    run = SuiteRun(snapshotter)
    target = work / f"mnt-{snapshotter}"
    target.mkdir()
    parent, counter = "", 0
    for _ in range(iterations):
        times = Iteration()
        for layer in range(1, LAYERS + 1):
            ops = layer_ops(layer)
            contents = [os.urandom(FILE_BYTES) for _ in ops]
            counter += 1
            key = f"prepare-layer-{counter}"
            started = time.perf_counter()
            mounts = stub.Prepare(pb.PrepareSnapshotRequest(
                snapshotter=snapshotter, key=key, parent=parent, labels=GC_ROOT),
                metadata=NAMESPACE, timeout=600).mounts
            times.prepare += time.perf_counter() - started
            if not run.notes:
                run.notes["filesystem"] = describe_filesystem(mounts[0].source)
            started = time.perf_counter()
            sh(*mount_argv(mounts, target))
            apply_layer(target, ops, contents)
            sh("umount", str(target))
            times.write += time.perf_counter() - started
            counter += 1
            parent = f"committed-{counter}"
            started = time.perf_counter()
            stub.Commit(pb.CommitSnapshotRequest(snapshotter=snapshotter, name=parent, key=key,
                                                 labels=GC_ROOT),
                        metadata=NAMESPACE, timeout=600)
            times.commit += time.perf_counter() - started
        run.iterations.append(times)
        print(f"  (g) {snapshotter} iteration {len(run.iterations)}: prepare {times.prepare:.1f}"
              f" write {times.write:.1f} commit {times.commit:.1f} s", file=sys.stderr)
    return run


def tarball() -> Path | None:
    """containerd 2.3.4's tarball in a `shared/` beside the checkout or one of its parents."""
    for directory in Path(__file__).resolve().parents:
        if (directory / TARBALL).is_file():
            return directory / TARBALL
    return None


@contextmanager
def containerd(base: Path, binary: Path, plugins_toml: str) -> Iterator[Any]:
    """containerd 2.3.4 with `plugins_toml`, its CRI off: a snapshots stub on its socket."""
    import grpc
    from kernel import stop, wait_for_socket

    from reconciler.api.proto import snapshots_pb2_grpc

    sock = base / "containerd.sock"
    (base / "containerd.toml").write_text(
        f'version = 3\nroot = "{base}/root"\nstate = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", '
        '"io.containerd.cri.v1.runtime"]\n'
        f'[grpc]\n  address = "{sock}"\n{plugins_toml}')
    process = subprocess.Popen([str(binary), "--config", str(base / "containerd.toml")],
                               stdout=(base / "containerd.log").open("w"),
                               stderr=subprocess.STDOUT)
    channel = None
    try:
        wait_for_socket(sock, process, "containerd", base / "containerd.log")
        channel = grpc.insecure_channel(f"unix:{sock}")
        yield snapshots_pb2_grpc.SnapshotsStub(channel)  # type: ignore[no-untyped-call]
    finally:
        if channel is not None:
            channel.close()
        stop(process)
        subprocess.run(["umount", "-R", str(base / "state")], capture_output=True)


# Our variants: (row name, extra config lines, whether the pool is made here as devmapper's is).
OURS = (
    ("reconciler", "", False),
    ("reconciler, devmapper's pool table", "", True),
    ("reconciler, that pool + devmapper's mkfs -E",
     f"fs_options = {list(DEVMAPPER_MKFS)!r}\n".replace("'", '"'), True),
)


def suite_runs(iterations: int, work: Path, variants: int = len(OURS)) -> list[SuiteRun]:
    """devmapper's run, then each of our variants, each behind a containerd of its own."""
    from kernel import loop_pool, pool_table, remove_devices, sh

    found = tarball()
    if found is None:
        print("(g) skipped: no containerd 2.3.4 tarball", file=sys.stderr)
        return []
    unpacked = work / "containerd-2.3.4"
    unpacked.mkdir()
    sh("tar", "-xJf", str(found), "-C", str(unpacked))
    binary = unpacked / "containerd"
    runs = []
    base = work / "g-devmapper"
    base.mkdir()
    with loop_pool("gdm", work) as (meta, data):
        sh("dmsetup", "create", "gdm", "--table", pool_table(meta, data))
        try:
            plugins = ("[plugins.'io.containerd.snapshotter.v1.devmapper']\n"
                       f'  pool_name = "gdm"\n  root_path = "{base}/devmapper"\n'
                       f'  base_image_size = "{BASE_SIZE}"\n  fs_type = "ext4"\n')
            with containerd(base, binary, plugins) as stub:
                run = run_suite(stub, "devmapper", iterations, base)
                run.notes["pool"] = sh("dmsetup", "table", "gdm").stdout.strip()
                runs.append(run)
        finally:
            remove_devices("gdm")
    shutil.rmtree(base, ignore_errors=True)
    for index, (name, extra, premade) in enumerate(OURS[:variants]):
        try:
            runs.append(ours_run(index, name, extra, premade, binary, iterations, work))
        except Exception as exc:  # noqa: BLE001 -- one variant's failure is reported, not fatal
            print(f"  (g) {name} failed: {exc!r}", file=sys.stderr)
    return runs


def ours_run(index: int, name: str, extra: str, premade: bool, binary: Path, iterations: int,
             work: Path) -> SuiteRun:
    """One of our variants: its daemon, a containerd with it as the proxy, the suite."""
    from kernel import our_daemon, sh

    base = work / f"g-ours{index}"
    base.mkdir()
    pool = f"gr{index}"
    print(f"  (g) {name}: starting", file=sys.stderr)
    with premade_pool(pool, work, premade) as devices, \
            our_daemon(base, pool, extra + devices) as ours_sock:
        plugins = ("[proxy_plugins.reconciler]\n  type = \"snapshot\"\n"
                   f'  address = "{ours_sock}"\n')
        with containerd(base, binary, plugins) as stub:
            run = run_suite(stub, "reconciler", iterations, base)
            run.name = name
            run.notes["pool"] = sh("dmsetup", "table", pool).stdout.strip()
    shutil.rmtree(base, ignore_errors=True)
    return run


@contextmanager
def premade_pool(pool: str, work: Path, premade: bool) -> Iterator[str]:
    """For a premade pool: its loop devices and the pool made with devmapper's table (our
    daemon adopts it), as config lines; else nothing (the daemon makes its loopback pool)."""
    from kernel import loop_pool, pool_table, sh

    if not premade:
        yield ""
        return
    with loop_pool(pool, work) as (meta, data):
        sh("dmsetup", "create", pool, "--table", pool_table(meta, data))
        yield f'data_device = "{data}"\nmetadata_device = "{meta}"\n'


def print_suite(runs: list[SuiteRun]) -> list[dict[str, Any]]:
    """Totals per iteration, side by side, with MB/s and the ratio to devmapper's."""
    rows: list[dict[str, Any]] = []
    if not runs:
        return rows
    written = LAYERS * len(FILES) * FILE_BYTES
    print(f"\n(g) containerd's benchsuite shape ({LAYERS} layers x {len(FILES)} files of 1 MiB,"
          f" ext4, base {BASE_SIZE}), s per iteration")
    print(f"{'':46} {'prepare':>8} {'write':>8} {'commit':>8} {'whole':>8} {'MB/s':>6}"
          "   ratio to devmapper (prepare / write / commit / whole)")
    reference = runs[0]
    for run in runs:
        for number, it in enumerate(run.iterations):
            ref = reference.iterations[number]
            ratio = " / ".join(f"{getattr(it, k) / getattr(ref, k):.2f}x"
                               for k in ("prepare", "write", "commit", "whole"))
            print(f"{run.name + f' #{number + 1}':46} {it.prepare:>8.2f} {it.write:>8.2f} "
                  f"{it.commit:>8.2f} {it.whole:>8.2f} {written / 1e6 / it.whole:>6.1f}   "
                  f"{ratio}")
        for key, value in run.notes.items():
            print(f"    {key}: {value}")
        rows.append({"name": run.name, "notes": run.notes,
                     "iterations": [{"prepare_s": round(it.prepare, 3),
                                     "write_s": round(it.write, 3),
                                     "commit_s": round(it.commit, 3),
                                     "whole_s": round(it.whole, 3),
                                     "mb_per_s": round(written / 1e6 / it.whole, 2)}
                                    for it in run.iterations]})
    return rows
