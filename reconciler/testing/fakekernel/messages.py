"""The fake kernel's pool messages: create_thin, create_snap, delete, set_transaction_id and the
metadata snapshot, with the refusals the kernel gives (24-bit ids, EEXIST, ENODATA, EBUSY).
"""

from __future__ import annotations

import errno

from reconciler.testing.fakekernel.devices import (
    DmDevice,
    Refused,
)
from reconciler.testing.fakekernel.metadata import (
    MAX_THIN_ID,
    MetadataSnapshot,
    PoolMetadata,
    Thin,
)
from reconciler.testing.fakekernel.registry import DeviceRegistry


class PoolMessages(DeviceRegistry):
    """What a thin-pool does with the messages sent to it."""

    # -- pool messages -----------------------------------------------------------------------

    def _apply_message(self, device: DmDevice, meta: PoolMetadata, words: list[str]) -> None:
        verb, numbers = words[0], words[1:]
        arity = {"create_thin": 1, "create_snap": 2, "delete": 1, "set_transaction_id": 2,
                 "reserve_metadata_snap": 0, "release_metadata_snap": 0}
        assert arity.get(verb) == len(numbers), \
            f"FakeKernel does not know the pool message {words!r}"
        if not all(n.isdigit() for n in numbers):
            raise Refused(errno.EINVAL)
        ids = [int(n) for n in numbers]
        if verb in ("create_thin", "create_snap", "delete") and max(ids) > MAX_THIN_ID:
            raise Refused(errno.EINVAL)  # captured: thin ids have 24 bits
        if verb == "create_thin":
            self._new_id(meta, ids[0])
            meta.thins[ids[0]] = Thin(tree=meta.new_tree())
        elif verb == "create_snap":
            self._create_snap(device, meta, ids[0], ids[1])
        elif verb == "delete":
            self._delete(device, meta, ids[0])
        elif verb == "set_transaction_id":
            if ids[0] != meta.transaction_id:
                raise Refused(errno.EINVAL)
            meta.transaction_id = ids[1]
        elif verb == "reserve_metadata_snap":
            if meta.held is not None:
                raise Refused(errno.EBUSY)  # captured: one snapshot at a time
            # Each thin's mappings copied (what deepcopy did, 20x faster at 10,000 thins).
            frozen = {i: Thin(dict(t.mappings), t.tree) for i, t in meta.thins.items()}
            meta.held = MetadataSnapshot(frozen, meta.transaction_id)
        elif verb == "release_metadata_snap":
            if meta.held is None:
                raise Refused(errno.EINVAL)  # captured: nothing to release
            meta.held = None

    @staticmethod
    def _new_id(meta: PoolMetadata, thin_id: int) -> None:
        if thin_id in meta.thins:
            raise Refused(errno.EEXIST)  # captured

    def _create_snap(self, pool: DmDevice, meta: PoolMetadata, new: int, origin: int) -> None:
        self._new_id(meta, new)
        if origin not in meta.thins:
            raise Refused(errno.ENODATA)
        # Captured: the kernel does not refuse an active origin that is not suspended, but its
        # in-flight writes may be missing from the snapshot: tests assert we never do it.
        if any(not d.suspended for d in self._thin_users(pool, origin)):
            self.unsafe_snapshots.append((new, origin))
        source = meta.thins[origin]
        meta.thins[new] = Thin(dict(source.mappings), tree=source.tree)
        for physical in source.mappings.values():
            meta.refcounts[physical] += 1

    def _delete(self, pool: DmDevice, meta: PoolMetadata, thin_id: int) -> None:
        if thin_id not in meta.thins:
            raise Refused(errno.ENODATA)
        if self._thin_users(pool, thin_id):
            raise Refused(errno.EBUSY)  # captured: an active thin cannot be deleted
        for physical in meta.thins.pop(thin_id).mappings.values():
            meta.unref(physical)

    def _thin_users(self, pool: DmDevice, thin_id: int) -> list[DmDevice]:
        """Devices whose live or inactive table opens this thin id of this pool."""
        wanted = (pool.number, str(thin_id))
        return [d for d in self.devices.values()
                for t in (d.live, d.inactive)
                if t and t.target == "thin" and (t.devices[0], t.args[0]) == wanted]
