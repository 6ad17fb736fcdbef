"""What the kernel says, read once per pass with a constant number of calls.

Three calls (info and table of every device, status of the pool) however many devices there
are; a partial pass over a few named devices reads just those (and the pool) instead. The
pass then keeps this view up to date from what it does itself. A thin device's status (how
much it has mapped) decides nothing in a pass, so only `status` reads it for every device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from reconciler.dm.driver import DmDriver
from reconciler.dm.errors import DmError, NoSuchDevice
from reconciler.dm.memo import LastCall
from reconciler.dm.parse import (
    parse_pool_status,
    parse_thin_status,
    parse_thin_table,
    thin_table_hidden,
)
from reconciler.dm.types import DeviceInfo, TargetLine, ThinPoolStatus, ThinStatus, ThinTable

# Defined beside the dm types it is made of, so the pure decision can name it without
# importing the observing (kernel-calling) code; importers here keep finding it.
from reconciler.dm.types import KernelDevice as KernelDevice


@dataclass
class Observation:
    """The kernel's view of all dm devices at the start of a pass."""

    devices: dict[str, KernelDevice] = field(default_factory=dict)
    pool: ThinPoolStatus | None = None
    pool_number: str = ""

    def device(self, name: str) -> KernelDevice | None:
        """The observed dm device of that name, if any."""
        return self.devices.get(name)


def _single(lines: list[TargetLine], target: str) -> TargetLine | None:
    if len(lines) == 1 and lines[0].target == target:
        return lines[0]
    return None


_Seen = tuple[DeviceInfo, TargetLine | None, TargetLine | None, KernelDevice]


@dataclass
class ParsedTargets:
    """What the last full observation made of each device: a converged pass sees the same
    lines again, which the drivers hand back as the same objects (dm.memo.LastCall)."""

    tables: LastCall[TargetLine, ThinTable] = field(default_factory=LastCall)
    statuses: LastCall[TargetLine, ThinStatus] = field(default_factory=LastCall)
    # By dm name: the info and lines a KernelDevice was built from, and the device.
    devices: dict[str, _Seen] = field(default_factory=dict)
    # The last listings themselves (a driver hands back the same objects when the kernel
    # printed the same text) and the devices made of them.
    listings: tuple[list[DeviceInfo], dict[str, list[TargetLine]]] | None = None
    made: dict[str, KernelDevice] = field(default_factory=dict)


def observe(client: DmDriver, pool_name: str, parsed: ParsedTargets | None = None,
            thin_statuses: bool = False) -> Observation:
    """Read info and table of every dm device, and the status of the pool, or of every
    device with `thin_statuses` (what `status` shows: each device's mapped space)."""
    infos = client.info_all()
    if thin_statuses:
        statuses = client.status_all()
    else:
        statuses = {}
        # A pool removed since the listing has no status: seen as gone by the next pass.
        with contextlib.suppress(NoSuchDevice):
            if any(info.name == pool_name for info in infos):
                statuses[pool_name] = client.status(pool_name)
    return _assemble(infos, statuses, client.table_all(), pool_name, parsed)


def observe_names(client: DmDriver, pool_name: str, names: Iterable[str]) -> Observation:
    """The same view, limited to the pool and `names` (three calls each): what a partial pass
    over a few devices needs, at a cost that does not grow with the number of devices."""
    infos, statuses, tables = [], {}, {}
    for name in dict.fromkeys([pool_name, *names]):
        info = client.info(name)
        if info is None:
            continue
        try:
            tables[name] = client.table(name)
            statuses[name] = client.status(name)
        except NoSuchDevice:
            continue  # removed between the calls
        infos.append(info)
    return _assemble(infos, statuses, tables, pool_name)


def _assemble(infos: list[DeviceInfo], statuses: dict[str, list[TargetLine]],
              tables: dict[str, list[TargetLine]], pool_name: str,
              parsed: ParsedTargets | None = None) -> Observation:
    observation = Observation()
    if parsed is not None and parsed.listings is not None and parsed.listings[0] is infos \
            and parsed.listings[1] is tables and statuses.keys() <= {pool_name}:
        # The very same listings, and no thin status asked for: the very same devices.
        observation.devices = dict(parsed.made)
        _see_pool(observation, statuses, pool_name)
        return observation
    devices = observation.devices
    last = parsed.devices if parsed is not None else {}
    seen: dict[str, _Seen] = {}
    for info in infos:
        name = info.name
        table_line = _single(tables.get(name, []), "thin")
        status_line = _single(statuses.get(name, []), "thin") if table_line else None
        before = last.get(name)
        if before is not None and before[0] is info and before[1] is table_line \
                and before[2] is status_line:
            device = before[3]
            seen[name] = before
        else:
            device = _device(info, table_line, status_line, parsed)
            if parsed is not None:
                seen[name] = (info, table_line, status_line, device)
        devices[name] = device
    _see_pool(observation, statuses, pool_name)
    if parsed is not None:
        parsed.tables.end_call()
        parsed.statuses.end_call()
        parsed.devices = seen
        parsed.listings = (infos, tables)
        parsed.made = dict(devices)
    return observation


def _see_pool(observation: Observation, statuses: dict[str, list[TargetLine]],
              pool_name: str) -> None:
    pool = observation.devices.get(pool_name)
    if pool is None:
        return
    observation.pool_number = f"{pool.info.major}:{pool.info.minor}"
    pool_line = _single(statuses.get(pool_name, []), "thin-pool")
    if pool_line is not None:
        observation.pool = parse_pool_status(pool_line)


def _device(info: DeviceInfo, table_line: TargetLine | None, status_line: TargetLine | None,
            parsed: ParsedTargets | None) -> KernelDevice:
    if table_line is None or thin_table_hidden(table_line):
        # A pool in Fail mode hides its thin devices' tables (and statuses): the device is
        # there, what it maps is not known; the pool's own status says why.
        return KernelDevice(info=info)
    if parsed is None:
        return KernelDevice(info, parse_thin_table(table_line),
                            None if status_line is None else parse_thin_status(status_line))
    return KernelDevice(info, parsed.tables.get(table_line, parse_thin_table),
                        None if status_line is None
                        else parsed.statuses.get(status_line, parse_thin_status))


def observe_safely(client: DmDriver, pool_name: str) -> tuple[Observation | None, str | None]:
    """observe(), or the error text when the kernel cannot be read (for status commands)."""
    try:
        return observe(client, pool_name, thin_statuses=True), None
    except DmError as exc:
        return None, str(exc)
