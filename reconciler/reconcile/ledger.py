"""What the reconciler knows of the pool's metadata between passes: the ledger.

The pool's transaction id counts our metadata changes, and its list of thin ids (thin_ls, a
metadata snapshot and a process) is read rarely and then kept current by our own changes.
The crash protocol (`intents`) moves both; recovery and the full passes re-read them. A
plain value beside the pass context, so that every layer of reconcile may hold one.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.dm.driver import DmDriver
from reconciler.dm.host import Host
from reconciler.reconcile.observe import Observation
from reconciler.tools.thin_ls import list_thin_ids


@dataclass
class PoolLedger:
    """What we know of the pool's metadata between passes: its transaction id (which counts
    our changes) and its thin ids (read with thin_ls, then kept current by our own changes)."""

    transaction_id: int = 0
    # None until first read.
    ids: set[int] | None = None
    # The pool's (transaction id, used metadata blocks) when `ids` was read.
    seen: tuple[int, int] | None = None

    def read_ids(self, host: Host, pool_name: str, metadata_device: str, client: DmDriver,
                 obs: Observation) -> set[int]:
        """Read the pool's thin ids now (a metadata snapshot and thin_ls)."""
        pool = obs.pool
        self.seen = None if pool is None else (pool.transaction_id, pool.used_metadata_blocks)
        self.ids = list_thin_ids(host, pool_name, metadata_device, client)
        return self.ids

    def changed_since_read(self, obs: Observation) -> bool:
        """Whether the pool's transaction id or metadata usage moved since `ids` was read."""
        pool = obs.pool
        now = None if pool is None else (pool.transaction_id, pool.used_metadata_blocks)
        return self.ids is None or now != self.seen
