"""What the kernel says, read once per pass with a constant number of calls.

Three calls (info, status, table of every device) however many devices there are; a partial
pass over a few named devices reads just those (and the pool) instead. The pass then keeps
this view up to date from what it does itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from reconciler.dm.driver import DmDriver
from reconciler.dm.errors import DmError, NoSuchDevice
from reconciler.dm.memo import LastCall
from reconciler.dm.parse import parse_pool_status, parse_thin_status, parse_thin_table
from reconciler.dm.types import DeviceInfo, TargetLine, ThinPoolStatus, ThinStatus, ThinTable


@dataclass
class KernelDevice:
    """One dm device as observed: info, and for thin devices their table and status."""

    info: DeviceInfo
    table: ThinTable | None = None
    status: ThinStatus | None = None


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


@dataclass
class ParsedTargets:
    """What each thin table and status line parsed to on the last full observation (a
    converged pass sees the same lines again)."""

    tables: LastCall[TargetLine, ThinTable] = field(default_factory=LastCall)
    statuses: LastCall[TargetLine, ThinStatus] = field(default_factory=LastCall)


def observe(client: DmDriver, pool_name: str, parsed: ParsedTargets | None = None,
            ) -> Observation:
    """Read info, status and table of every dm device."""
    return _assemble(client.info_all(), client.status_all(), client.table_all(), pool_name,
                     parsed)


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
    for info in infos:
        device = KernelDevice(info=info)
        table_line = _single(tables.get(info.name, []), "thin")
        if table_line is not None:
            device.table = parse_thin_table(table_line) if parsed is None \
                else parsed.tables.get(table_line, parse_thin_table)
            status_line = _single(statuses.get(info.name, []), "thin")
            if status_line is not None:
                device.status = parse_thin_status(status_line) if parsed is None \
                    else parsed.statuses.get(status_line, parse_thin_status)
        observation.devices[info.name] = device
        if info.name == pool_name:
            observation.pool_number = f"{info.major}:{info.minor}"
            pool_line = _single(statuses.get(info.name, []), "thin-pool")
            if pool_line is not None:
                observation.pool = parse_pool_status(pool_line)
    if parsed is not None:
        parsed.tables.end_call()
        parsed.statuses.end_call()
    return observation


def observe_safely(client: DmDriver, pool_name: str) -> tuple[Observation | None, str | None]:
    """observe(), or the error text when the kernel cannot be read (for status commands)."""
    try:
        return observe(client, pool_name), None
    except DmError as exc:
        return None, str(exc)
