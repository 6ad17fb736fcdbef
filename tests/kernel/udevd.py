"""udevd in the VM guest, for the kernel tests that need it stopped, restarted or running:
found through /proc, started as `systemd-udevd --daemon`, stopped by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reconciler.dm.host import SystemHost
from reconciler.dm.udev import UDEV_CONTROL, UDEVD_NAMES, udev_running

UDEVD = "/lib/systemd/systemd-udevd"


def find_udevd() -> tuple[int, list[str]] | None:
    """udevd's pid and argv, or None when none runs (this PID namespace's view)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if comm in UDEVD_NAMES:
            return int(entry.name), [word.decode() for word in argv if word]
    return None


def wait_gone(pid: int) -> None:
    """Wait up to 5 s for `pid` to exit, then SIGKILL it."""
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def start_udevd(argv: list[str]) -> None:
    """Start udevd as `argv` (with --daemon) and wait until its control socket accepts."""
    if "--daemon" not in argv and "-d" not in argv:
        argv = [*argv, "--daemon"]
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=30)
    for _ in range(100):
        if Path(UDEV_CONTROL).exists() and udev_running():
            break
        time.sleep(0.05)
    SystemHost().run(["udevadm", "settle", "--timeout=10"])


@contextmanager
def udevd_running() -> Iterator[int]:
    """udevd runs inside (started if it did not, and stopped again after): its pid."""
    found = find_udevd()
    started = found is None
    if started:
        start_udevd([UDEVD])
        found = find_udevd()
    assert found is not None, "udevd did not start"
    try:
        yield found[0]
    finally:
        if started:
            os.kill(found[0], signal.SIGTERM)
            wait_gone(found[0])
