"""Reading the pool's own record of thin ids (thin_ls on a metadata snapshot).

A live pool's metadata can only be read consistently from a metadata snapshot: reserve one,
list it, release it, whatever happens in between.
"""

from __future__ import annotations

import structlog

from reconciler.dm.client import DmClient
from reconciler.dm.errors import DeviceBusy, ParseError, classify
from reconciler.dm.host import Host

log = structlog.get_logger(__name__)


def list_thin_ids(host: Host, pool: str, metadata_device: str) -> set[int]:
    """Every thin id the pool's metadata holds."""
    client = DmClient(host)
    try:
        client.message(pool, ["reserve_metadata_snap"])
    except DeviceBusy:
        # A snapshot is already held: one we reserved before a crash. It is stale, so it is
        # released and a fresh one taken.
        log.warning("pool.metadata_snap_held", pool=pool, next="releasing it, reserving anew")
        client.message(pool, ["release_metadata_snap"])
        client.message(pool, ["reserve_metadata_snap"])
    try:
        completed = host.run(["thin_ls", "--metadata-snap", "--no-headers", "-o", "DEV",
                              metadata_device])
    finally:
        client.message(pool, ["release_metadata_snap"])
    if not completed.ok:
        raise classify(f"thin_ls {metadata_device}", completed)
    ids = set()
    for line in completed.stdout.splitlines():
        word = line.strip()
        if not word:
            continue
        if not word.isdigit():
            raise ParseError("thin_ls", detail=f"field 'DEV' (thin id): unexpected {word!r}")
        ids.add(int(word))
    return ids
