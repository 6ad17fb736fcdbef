"""Section (h) of benchmarks/kernel.py: the bare floor at the process level (issue 26's first
table and its "done when" rows).

N devices (filesystem "none"), each side a process whose start is included:
- bare: `bare_dm.py create` (create_thin message, create + load + resume) then `bare_dm.py
  remove` (remove, delete), libdevmapper through ctypes and nothing of ours;
- ours: N spec files written and one `reconciler run --once`, then the N files deleted and
  one `run --once --allow-removals`. A device beyond the N (made first, untimed) stays, so the
  removal is not "every device" (the removal guard's rule; --allow-removals confirms it).
First with no udevd (one running is stopped meanwhile; filesystem "none" opens no node), the
bare loop making its /dev/mapper nodes itself; then with udevd running, against the bare loop
with a cookie per call (a) and with one cookie per phase (ab), the floor for a pass.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BARE = Path(__file__).resolve().parent / "bare_dm.py"
UDEVD = "/lib/systemd/systemd-udevd"
UDEV_CONTROL = Path("/run/udev/control")
A_ROW_MAX = 100


@dataclass
class FloorRow:
    """Wall seconds of one side's create process and remove process for n devices."""

    name: str
    n: int
    create: float
    remove: float
    # "floor": what the rows after it are compared with; "ours": compared; "": shown only.
    role: str = ""

    def per_device_ms(self) -> dict[str, float]:
        return {"create": round(self.create / self.n * 1000, 1),
                "remove": round(self.remove / self.n * 1000, 1)}


def timed(argv: list[str], log: Path) -> float:
    """Wall seconds of a process, from its start to its exit; it must exit 0."""
    started = time.perf_counter()
    with log.open("a") as out:
        rc = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - started
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {rc}:\n{log.read_text()[-3000:]}")
    return elapsed


def bare_row(name: str, pool: str, first: int, n: int, work: Path, batched: bool,
             floor: bool = True) -> FloorRow:
    """The bare process over thin ids first..first+n-1 of `pool`."""
    extra = ["--batched"] if batched else []
    log = work / "bare.log"
    create = timed([sys.executable, str(BARE), "create", pool, str(first), str(n), *extra], log)
    remove = timed([sys.executable, str(BARE), "remove", pool, str(first), str(n), *extra], log)
    print(f"  (h) {name}: {create:.1f} s / {remove:.1f} s", file=sys.stderr)
    return FloorRow(name, n, create, remove, "floor" if floor else "")


def ours_row(name: str, n: int, work: Path) -> FloorRow:
    """`run --once` of n new spec files, then of their deletion, on a pool of its own."""
    from kernel import remove_devices, sh

    pool = f"h{secrets.token_hex(3)}"
    base = work / pool
    specs = base / "specs"
    specs.mkdir(parents=True)
    config = base / "reconciler.toml"
    config.write_text(
        f'root_path = "{base}/root"\nspec_dir = "{specs}"\npool_name = "{pool}"\n'
        'base_image_size = "64MiB"\nloopback_data_size = "8GiB"\n'
        'loopback_metadata_size = "128MiB"\ndm_driver = "libdevmapper"\n'
        'retry_initial = "50ms"\nretry_max = "1s"\n')
    once = [sys.executable, "-m", "reconciler.cli", "run", "-c", str(config),
            "--log-level", "error", "--once"]
    log = base / "run.log"
    try:
        # The pool and the device that stays, untimed.
        (specs / "keep.toml").write_text('filesystem = "none"\n')
        timed(once, log)
        for i in range(n):
            (specs / f"d{i}.toml").write_text('filesystem = "none"\n')
        create = timed(once, log)
        for i in range(n):
            (specs / f"d{i}.toml").unlink()
        remove = timed([*once, "--allow-removals"], log)
        print(f"  (h) {name}: {create:.1f} s / {remove:.1f} s", file=sys.stderr)
        return FloorRow(name, n, create, remove, "ours")
    finally:
        remove_devices(pool)
        for path in sorted((base / "root" / "loopback").glob("*")):
            for loop in sh("losetup", "-j", str(path), check=False).stdout.splitlines():
                sh("losetup", "-d", loop.split(":")[0], check=False)
        shutil.rmtree(base, ignore_errors=True)  # /tmp is RAM in the VM


def udevd_pid() -> int | None:
    """The pid of a running systemd-udevd, if any."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "systemd-udevd":
                    return int(entry.name)
            except OSError:
                continue
    return None


def start_udevd(argv: list[str]) -> None:
    """udevd as `argv` (daemonized), once its control socket is there and its queue empty."""
    from kernel import sh

    sh(*argv, *([] if "--daemon" in argv else ["--daemon"]))
    for _ in range(200):
        if UDEV_CONTROL.exists():
            break
        time.sleep(0.05)
    sh("udevadm", "settle", "--timeout=30", check=False)


def stop_udevd(pid: int) -> None:
    """SIGTERM, and wait up to 10 s for it to go."""
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)


@contextmanager
def udevd_stopped() -> Iterator[None]:
    """No udevd inside: one running is stopped, and started again as it was after."""
    pid = udevd_pid()
    argv = [w.decode() for w in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if w] \
        if pid is not None else []
    if pid is not None:
        stop_udevd(pid)
        # A stopped udevd leaves its control socket behind, and libudev (so libdevmapper)
        # takes the file for a running udev: every cookie would then wait forever.
        UDEV_CONTROL.unlink(missing_ok=True)
    try:
        yield
    finally:
        if argv:
            start_udevd(argv)


@contextmanager
def udevd() -> Iterator[bool]:
    """udevd runs inside (started here if it did not, and stopped after): whether it runs."""

    pid = udevd_pid()
    started = pid is None and Path(UDEVD).exists()
    if started:
        start_udevd([UDEVD])
        pid = udevd_pid()
    try:
        yield pid is not None
    finally:
        if started and pid is not None:
            stop_udevd(pid)


def attempt(row: Callable[[], FloorRow]) -> list[FloorRow]:
    """The row, or none when it failed (said on stderr): the other rows still count."""
    try:
        return [row()]
    except Exception as exc:  # noqa: BLE001 -- reported, and the section goes on
        print(f"  (h) failed: {exc}", file=sys.stderr)
        return []


def floor_rows(n: int, work: Path) -> list[FloorRow]:
    """Without udev (stopped meanwhile if it runs), then with it: the rows of (h)."""
    from kernel import loop_pool, pool_table, remove_retrying, sh

    rows: list[FloorRow] = []
    pool = f"hb{secrets.token_hex(2)}"
    with loop_pool(pool, work) as (meta, data):
        sh("dmsetup", "create", pool, "--noudevsync", "--table", pool_table(meta, data))
        # dmsetup --noudevsync leaves the pool's node to udev: have udev make it before udev
        # is stopped (the bare rows name the pool by its /dev/mapper path; with processes
        # fast enough, udev was stopped first and the thin tables' path was not there).
        sh("udevadm", "settle", "--timeout=60", check=False)
        try:
            with udevd_stopped():
                rows.append(bare_row("bare libdevmapper, no udev", pool, 0, n, work, False))
                rows.extend(attempt(lambda: ours_row("reconciler run --once, no udev", n, work)))
            with udevd() as running:
                # (a) is shown, not compared, and its wait per call is the slowest row by
                # far: at N = 1,000 it would cost more than the rest of (h) together.
                if running and n <= A_ROW_MAX:
                    rows.append(bare_row("(a) bare, udev, a wait per call", pool, n, n, work,
                                         False, floor=False))
                if running:
                    rows.append(bare_row("(ab) bare, udev, one wait per phase", pool, 2 * n, n,
                                         work, True))
                    rows.extend(attempt(lambda: ours_row("reconciler run --once, udev", n, work)))
        finally:
            from kernel import BareLibdm

            remove_retrying(BareLibdm(), pool)
    return rows


def print_floor(rows: list[FloorRow]) -> list[dict[str, Any]]:
    """Per device ms and the ratio to the bare row of the same udev condition ((ab) with
    udev: the floor for a pass)."""
    out = []
    print(f"\n(h) process level, N = {rows[0].n if rows else '-'}; per device, ms "
          f"{'create+activate':>16} {'remove+delete':>14}   ratio (create / remove)")
    floor: dict[str, float] = {}
    for row in rows:
        ms = row.per_device_ms()
        if row.role == "floor":
            floor, ratio = ms, "floor"
        elif row.role == "ours" and floor:
            ratio = (f"{ms['create'] / floor['create']:.2f}x / "
                     f"{ms['remove'] / floor['remove']:.2f}x")
        else:
            ratio = "-"
        print(f"{row.name:45} {ms['create']:>16} {ms['remove']:>14}   {ratio}")
        out.append({"name": row.name, "n": row.n, "create_s": round(row.create, 3),
                    "remove_s": round(row.remove, 3), "per_device_ms": ms, "ratio": ratio})
    return out
