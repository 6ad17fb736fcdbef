"""Section (i) of benchmarks/kernel.py: what a child Prepare's node costs under each way of
meeting udev (issue 26: "child Prepare <= 1/3 of devmapper's"), with udevd running.

The activation of a snapshot of an ext4 layer (create_snap of an inactive origin, then create +
load + resume of the snapshot's device), timed until its /dev/mapper node can be mounted, K
times for each mode:
  wait       a cookie with no flags, waited for: udev runs every rule (today's way)
  lean-wait  a cookie with the subsystem and "other" rules skipped (DM_UDEV_DISABLE_SUBSYSTEM_
             and _OTHER_RULES_FLAG), waited for: dm and disk rules (node, by-* links) still run
  rules=0    LVM's `udev_rules = 0`: dm, subsystem, disk and other rules skipped, libdevmapper
             makes the node itself; the cookie (udev's confirmation) still waited for
  no-wait    no cookie: libdevmapper makes the node at once and udev runs every rule behind it
Then, for each mode, whether a device made by mkfs -L gets its /dev/disk/by-label link once
udev is settled (what users who mount by label need).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DM_RULES, SUBSYSTEM_RULES, DISK_RULES, OTHER_RULES = 0x1, 0x2, 0x4, 0x8
# (name, sync with udev, cookie flags, wait for the cookie)
MODES = (
    ("wait", True, 0, True),
    ("lean-wait", True, SUBSYSTEM_RULES | OTHER_RULES, True),
    ("rules=0", True, DM_RULES | SUBSYSTEM_RULES | DISK_RULES | OTHER_RULES, True),
    ("no-wait", False, 0, False),
)


@dataclass
class ModeRun:
    name: str
    seconds: list[float] = field(default_factory=list)
    by_label: str = ""


def activate(lib: Any, name: str, table: str, sync: bool, flags: int, wait: bool) -> None:
    """create + load + resume of `name` under one mode; returns when its node is there."""
    from reconciler.dm.libdm_bindings import DM_DEVICE_CREATE

    lib.dm_udev_set_sync_support(1 if sync else 0)
    start, length, target, params = table.split(maxsplit=3)
    dmt = lib.dm_task_create(DM_DEVICE_CREATE)
    cookie = ctypes.c_uint32(0)
    try:
        lib.dm_task_set_name(dmt, name.encode())
        lib.dm_task_set_uuid(dmt, f"BENCH-{name}".encode())
        lib.dm_task_add_target(dmt, int(start), int(length), target.encode(), params.encode())
        lib.dm_task_set_cookie(dmt, ctypes.byref(cookie), flags)
        ok = lib.dm_task_run(dmt)
    finally:
        lib.dm_task_destroy(dmt)
    if not ok:
        raise OSError(f"create {name} failed")
    # Without a wait the nodes libdevmapper stacked are made here (a cookie of 0 never blocks).
    lib.dm_udev_wait(cookie.value if wait else 0)
    if not wait:
        lib.dm_task_update_nodes()
    node = Path(f"/dev/mapper/{name}")
    deadline = time.monotonic() + 60
    while not node.exists():  # a wait on udev's word: the node is there; no-wait: libdm made it
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node} not there 60 s after its activation")
        time.sleep(0.001)


def mode_runs(samples: int, work: Path) -> list[ModeRun]:
    """Each mode's activations of snapshots of one ext4 origin, then its by-label check."""
    from kernel import BareLibdm, loop_pool, pool_table, remove_retrying, sh

    bare = BareLibdm()
    if not bare.udev:
        print("(i) skipped: needs udevd", flush=True)
        return []
    lib = bare.lib
    pool = f"ui{secrets.token_hex(2)}"

    def thin(thin_id: int) -> str:
        return f"0 {2048 * 64} thin /dev/mapper/{pool} {thin_id}"

    runs = []
    with loop_pool(pool, work) as (meta, data):
        bare.create(pool, pool_table(meta, data), f"BENCH-{pool}")
        try:
            bare.message(pool, ["create_thin", "0"])
            bare.create(f"{pool}-origin", thin(0), f"BENCH-{pool}-0")
            sh("mkfs.ext4", "-q", "-L", f"{pool}o", f"/dev/mapper/{pool}-origin")
            sh("udevadm", "settle")
            remove_retrying(bare, f"{pool}-origin")
            next_id = 1
            for name, sync, flags, wait in MODES:
                run = ModeRun(name)
                made = []
                for _ in range(samples):
                    device = f"{pool}-s{next_id}"
                    started = time.perf_counter()
                    bare.message(pool, ["create_snap", str(next_id), "0"])
                    activate(lib, device, thin(next_id), sync, flags, wait)
                    run.seconds.append(time.perf_counter() - started)
                    made.append(device)
                    next_id += 1
                sh("udevadm", "settle")
                for device in made:
                    remove_retrying(bare, device)
                run.by_label = by_label(bare, lib, pool, next_id, (sync, flags, wait))
                print(f"  (i) {name}: {[round(t * 1000) for t in run.seconds]} ms, by-label: "
                      f"{run.by_label}", file=sys.stderr)
                next_id += 1
                runs.append(run)
        finally:
            sh("udevadm", "settle", check=False)
            from kernel import remove_devices
            remove_devices(pool)
    return runs


def by_label(bare: Any, lib: Any, pool: str, thin_id: int, mode: tuple[bool, int, bool]) -> str:
    """A fresh device labelled by mkfs -L, deactivated, then activated under `mode`: whether
    /dev/disk/by-label/LABEL leads to it once udev settled."""
    from kernel import remove_retrying, sh

    device, label = f"{pool}-l{thin_id}", f"l{pool}{thin_id}"
    table = f"0 {2048 * 64} thin /dev/mapper/{pool} {thin_id}"
    bare.message(pool, ["create_thin", str(thin_id)])
    bare.create(device, table, f"BENCH-{pool}-{thin_id}")
    sh("mkfs.ext4", "-q", "-L", label, f"/dev/mapper/{device}")
    sh("udevadm", "settle")
    remove_retrying(bare, device)
    sh("udevadm", "settle")
    activate(lib, device, table, *mode)
    sh("udevadm", "settle")
    link, node = Path(f"/dev/disk/by-label/{label}"), Path(f"/dev/mapper/{device}")
    # By device number: libdevmapper's node is a block node, udev's a link to /dev/dm-N.
    found = ("no link" if not link.exists() else "link to the device"
             if link.stat().st_rdev == node.stat().st_rdev else
             f"link elsewhere ({os.path.realpath(link)})")
    found += ", /dev/mapper node: " + ("udev's link" if node.is_symlink() else "block node")
    lib.dm_udev_set_sync_support(1)
    remove_retrying(bare, device)
    return found


def print_modes(runs: list[ModeRun]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not runs:
        return rows
    reference = statistics.median(runs[0].seconds)
    print(f"\n(i) snapshot activation until its node is there, udevd running, ms"
          f" ({len(runs[0].seconds)} each)")
    print(f"{'mode':12} {'p50':>8} {'mean':>8} {'max':>8}   ratio to wait   by-label")
    for run in runs:
        p50 = statistics.median(run.seconds)
        print(f"{run.name:12} {p50 * 1000:>8.1f} {statistics.mean(run.seconds) * 1000:>8.1f} "
              f"{max(run.seconds) * 1000:>8.1f}   {p50 / reference:>6.2f}x        "
              f"{run.by_label}")
        rows.append({"mode": run.name, "p50_ms": round(p50 * 1000, 1),
                     "mean_ms": round(statistics.mean(run.seconds) * 1000, 1),
                     "by_label": run.by_label})
    return rows
