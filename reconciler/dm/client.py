"""DmClient: device-mapper's operations as typed calls, over `dmsetup` run through a Host.

The argv forms here are exactly those captured in fixtures/dmsetup/, so the fake kernel and the
parity test speak the same language as production; create, resume and remove end with
`--noudevsync` where udev cannot confirm our cookies (`dm.udev.UdevGate`): a dmsetup left to
wait for them would wait until the Host kills it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from reconciler.dm.errors import DmError, NoSuchDevice, classify
from reconciler.dm.host import Completed, Host
from reconciler.dm.memo import LastText
from reconciler.dm.parse import (
    NamedLine,
    listing_lines,
    named_targets,
    parse_info_columns,
    parse_info_line,
    parse_ls,
    parse_named_line,
    parse_single_lines,
)
from reconciler.dm.types import DeviceInfo, DeviceListing, TargetLine
from reconciler.dm.udev import UdevGate, udev_facts_of
from reconciler.dm.udev_sync import NodeWait, UdevSync

DMSETUP = "dmsetup"
INFO_COLUMNS = "name,uuid,major,minor,attr,open,segments,events"
# dmsetup lists the devices, then asks each one: a device removed in between (by another
# tool, or by a concurrent call of ours) fails the whole command, "Device does not exist."
# (seen on the real kernel while another test session removed its devices). A fresh listing
# no longer names it; only a kernel removing devices without pause fails them all.
LISTING_ATTEMPTS = 5


class DmClient:
    """list, status, table, info, create, load, suspend, resume, remove, message."""

    def __init__(self, host: Host, udev: UdevGate | None = None) -> None:
        self.host = host
        # Whether dmsetup may wait for udev; without a probe cookie unless given one
        # (dm.driver.make_client gives libdevmapper's when the host offers the library).
        self.udev = udev if udev is not None else UdevGate(udev_facts_of(host))
        # The last info/status/table of all devices, its text and what it parsed to: a
        # converged system prints the very same text, which then costs one comparison; a
        # changed one parses only the lines that changed.
        self._info_all: LastText[DeviceInfo, list[DeviceInfo]] = LastText(
            listing_lines, parse_info_line, list)
        self._status_all: LastText[NamedLine, dict[str, list[TargetLine]]] = LastText(
            listing_lines, parse_named_line, named_targets)
        self._table_all: LastText[NamedLine, dict[str, list[TargetLine]]] = LastText(
            listing_lines, parse_named_line, named_targets)

    def udev_sync(self) -> UdevSync:
        """Whether create, resume and remove wait for udev (proved at the first ask, and
        again when udev appears or goes)."""
        return self.udev.sync()

    def _cookie(self, argv: list[str], node_wait: NodeWait = NodeWait.UDEV) -> list[str]:
        """argv of a command that waits for udev, told not to where udev cannot confirm, or
        for a device udev leaves alone (`NodeWait.NODE`): then `--noudevrules` (udev's dm
        rules off: no /dev/mapper link to make or unlink, whatever event runs late) and
        `--verifyudev`, as dmsetup otherwise leaves the node to udev even unsynchronised
        (its libdevmapper tasks carry DM_UDEV_DISABLE_LIBRARY_FALLBACK); with it, dmsetup's
        libdevmapper makes or unlinks the node before it exits. dmsetup cannot turn udev's
        disk rules off: their blkid probe and by-id links stay (libdevmapper's driver turns
        them off)."""
        if node_wait is NodeWait.NODE:
            return [*argv, "--noudevsync", "--noudevrules", "--verifyudev"]
        if self.udev.sync().waits:
            return argv
        return [*argv, "--noudevsync"]

    def _run(self, what: str, argv: Sequence[str]) -> Completed:
        completed = self.host.run([DMSETUP, *argv])
        if not completed.ok:
            raise classify(what, completed)
        return completed

    def _run_listing(self, what: str, argv: Sequence[str]) -> Completed:
        """`_run` for a command over every device, read again when a device listed went
        away before dmsetup asked it (LISTING_ATTEMPTS)."""
        for _ in range(LISTING_ATTEMPTS - 1):
            try:
                return self._run(what, argv)
            except NoSuchDevice:
                continue
        return self._run(what, argv)

    def list_devices(self) -> list[DeviceListing]:
        """Every dm device's name and number."""
        return parse_ls(self._run("list devices", ["ls"]).stdout)

    def info_all(self) -> list[DeviceInfo]:
        """Info of every dm device in one call. The same list as the last call's when the
        kernel printed the same text: read it, never change it."""
        out = self._run_listing("info", ["info", "-c", "--noheadings", "--nameprefixes", "-o",
                                         INFO_COLUMNS]).stdout
        return self._info_all.parse(out)

    def info(self, name: str) -> DeviceInfo | None:
        """Info of one device, or None if there is no such device."""
        try:
            out = self._run(f"info {name}", ["info", "-c", "--noheadings", "--nameprefixes",
                                             "-o", INFO_COLUMNS, name]).stdout
        except DmError as exc:
            if exc.errno_name == "ENXIO":
                return None
            raise
        infos = parse_info_columns(out)
        return infos[0] if infos else None

    def status_all(self) -> dict[str, list[TargetLine]]:
        """Status lines of every dm device in one call. The same dict as the last call's when
        the kernel printed the same text: read it, never change it."""
        return self._status_all.parse(self._run_listing("status", ["status"]).stdout)

    def status(self, name: str) -> list[TargetLine]:
        """Status lines of one device."""
        return parse_single_lines(self._run(f"status {name}", ["status", name]).stdout)

    def table_all(self) -> dict[str, list[TargetLine]]:
        """Live tables of every dm device in one call. The same dict as the last call's when
        the kernel printed the same text: read it, never change it."""
        out = self._run_listing("table", ["table"]).stdout
        return self._table_all.parse(out)

    def table(self, name: str) -> list[TargetLine]:
        """Live table of one device."""
        return parse_single_lines(self._run(f"table {name}", ["table", name]).stdout)

    def create(self, name: str, table: str, uuid: str, readonly: bool = False,
               node_wait: NodeWait = NodeWait.UDEV) -> None:
        """Create a device and load and resume its table (waiting for udev as `node_wait`
        says)."""
        argv = ["create", name, "--uuid", uuid, "--table", table]
        if readonly:
            argv.append("--readonly")
        self._run(f"create {name}", self._cookie(argv, node_wait))

    def load(self, name: str, table: str, readonly: bool = False) -> None:
        """Load an inactive table; it takes effect at the next resume."""
        argv = ["load", name, "--table", table]
        if readonly:
            argv.append("--readonly")
        self._run(f"load {name}", argv)

    def suspend(self, name: str) -> None:
        """Suspend a device (I/O queues; a filesystem on it is frozen first)."""
        self._run(f"suspend {name}", ["suspend", name])

    def resume(self, name: str, node_wait: NodeWait = NodeWait.UDEV) -> None:
        """Resume a device, swapping in its inactive table if one was loaded."""
        self._run(f"resume {name}", self._cookie(["resume", name], node_wait))

    @contextmanager
    def deferred_udev(self) -> Iterator[None]:
        """Nothing to defer: each dmsetup process waits for udev before it exits."""
        yield

    def settle_udev(self) -> None:
        """Nothing pending (see deferred_udev)."""

    def remove(self, name: str, deferred: bool = False,
               node_wait: NodeWait = NodeWait.UDEV) -> None:
        """Remove a device (never with --force: a busy device stays and says so). With
        `deferred`, an open device is marked instead and the kernel removes it when its last
        opener closes it."""
        argv = ["remove", "--deferred", name] if deferred else ["remove", name]
        self._run(f"remove{' --deferred' if deferred else ''} {name}",
                  self._cookie(argv, node_wait))

    def message(self, name: str, words: Sequence[str]) -> None:
        """Send a target message (sector 0), e.g. create_thin to a pool."""
        self._run(f"message {name} {' '.join(words)}", ["message", name, "0", *words])
