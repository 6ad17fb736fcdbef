"""Reading the pool's own record of thin ids (thin_ls on a metadata snapshot).

A live pool's metadata can only be read consistently from a metadata snapshot: reserve one,
list it, release it, whatever happens in between. thin_ls failing (or printing what we
cannot read) is a ToolError; the reserve and release messages are dm calls (DmError).
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog

from reconciler.dm.client import DmClient
from reconciler.dm.driver import DmDriver
from reconciler.dm.errors import DeviceBusy
from reconciler.dm.host import Host
from reconciler.tools.errors import ToolError, tool_failed

log = structlog.get_logger(__name__)


def _thin_ls(host: Host, pool: str, metadata_device: str, fields: str,
             client: DmDriver | None) -> Iterator[list[str]]:
    """Rows of thin_ls on a fresh metadata snapshot, one per thin id, made as they are read:
    a pool of 50,000 thin ids held them all (6 MB of lists and strings) only to count them.
    Its reserve, thin_ls and release all run before the first row."""
    client = client if client is not None else DmClient(host)
    try:
        client.message(pool, ["reserve_metadata_snap"])
    except DeviceBusy:
        # A snapshot is already held: one we reserved before a crash. It is stale, so it is
        # released and a fresh one taken.
        log.warning("pool.metadata_snap_held", pool=pool, next="releasing it, reserving anew")
        client.message(pool, ["release_metadata_snap"])
        client.message(pool, ["reserve_metadata_snap"])
    try:
        completed = host.run(["thin_ls", "--metadata-snap", "--no-headers", "-o", fields,
                              metadata_device])
    finally:
        client.message(pool, ["release_metadata_snap"])
    if not completed.ok:
        raise tool_failed(f"thin_ls {metadata_device}", completed)
    return _rows(completed.stdout, fields)


def _rows(text: str, fields: str) -> Iterator[list[str]]:
    """thin_ls's `fields` (numbers) of each line of `text`; ToolError at a line that is not."""
    names = fields.split(",")
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if len(words) != len(names) or not all(w.isdigit() for w in words):
            raise ToolError("thin_ls", detail=f"fields {fields} (numbers): unexpected "
                             f"{line.strip()!r}")
        yield words


def list_thin_ids(host: Host, pool: str, metadata_device: str,
                  client: DmDriver | None = None) -> set[int]:
    """Every thin id the pool's metadata holds."""
    return {int(row[0]) for row in _thin_ls(host, pool, metadata_device, "DEV", client)}


def exclusive_bytes(host: Host, pool: str, metadata_device: str,
                    client: DmDriver | None = None) -> dict[int, int]:
    """Bytes each thin id maps that no other thin device shares (what a snapshot wrote
    beyond its origin), by thin id."""
    rows = _thin_ls(host, pool, metadata_device, "DEV,EXCLUSIVE_BYTES", client)
    return {int(dev): int(size) for dev, size in rows}
