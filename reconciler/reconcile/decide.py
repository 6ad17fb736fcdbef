"""The next step for one device: a pure function of its record, its spec and the kernel.

Level-triggered: the decision looks only at where the device is (its stored state and what
the kernel shows) and where it should be (its spec), never at what woke us. Nothing here
reads or writes anything, so every rule is table-tested without a kernel
(tests/test_decide.py), and `reconciler plan` is this function alone.

Being pure, it answers the same for the same inputs: `Settled` keeps, for each device it
found with nothing to do, everything it was given, and a resync that finds all of it
unchanged (read afresh: the spec file's stat, the kernel's listing, the record) need not ask
again. That is how a converged resync of 10,000 devices stays cheap without trusting events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from reconciler.dm.types import KernelDevice
from reconciler.dm.udev_sync import NodeWait
from reconciler.specs.model import DeviceSpec, is_base_device, is_snapshot_device
from reconciler.states import IN_FLIGHT, LIVE, RESTING_PROVISIONED, RESUMES, DeviceState, Step
from reconciler.store.records import DeviceRecord, record_fields
from reconciler.units import Bytes, to_sectors
from reconciler.vocabulary import Filesystem, PlanAction

S = DeviceState


@dataclass(frozen=True)
class Wait:
    """The device cannot take its next step yet (its parent is not ready); not an error."""

    reason: str


Decision = Step | Wait | None
"""A step to run, a reason to wait, or None: nothing to do."""


class Inputs(NamedTuple):
    """Everything next_step is given about one device, in its argument order
    (`next_step(*inputs)`). Built in one place for a pass (`PassContext.inputs`): the drive
    loop, `Settled` and `reconciler plan` decide on the same thing."""

    record: DeviceRecord
    spec: DeviceSpec | None
    kernel: KernelDevice | None
    parent: DeviceRecord | None
    hold_new: str | None = None


def next_step(record: DeviceRecord, spec: DeviceSpec | None, kernel: KernelDevice | None,
              parent: DeviceRecord | None, hold_new: str | None = None) -> Decision:
    """What to do next to a device.

    `spec` is None when nobody wants the device any more; `kernel` is its dm device as
    observed (None: not mapped); `parent` is the record of the device it is a snapshot of;
    `hold_new` is why no new device may be made now (guards.new_devices_held), if so.
    The record's spec wishes (size, mode, active) are already applied to it.
    """
    state = record.state
    if state in IN_FLIGHT:
        return RESUMES[state]
    if state in LIVE and kernel is None:
        return Step.VANISHED
    if spec is None:
        return _unwanted(state)
    if state == S.REMOVED:
        return Step.RECREATE
    if state == S.FAULTY:
        # Left alone until its spec changes (or an operator asks for a retry).
        return Step.RETRY if spec_changed(record, spec) else None
    if state == S.UNKNOWN:
        held = Wait(hold_new) if hold_new is not None else None
        return _parent_wait(record, parent) or held or Step.CREATE
    if state in (S.CREATED, S.DEACTIVATED):
        # Activated to be used, or (when wanted inactive) once to be formatted; a device the
        # kernel still maps is taken back under our machine by activating it, unless it is
        # open and unwanted: a deferred remove waiting for its holder's last close.
        if spec.active or not record.formatted:
            return Step.ACTIVATE
        if kernel is not None and not kernel.info.removal_deferred:
            return Step.ACTIVATE
        return None
    # Live: format once, then match mode and size, grow the filesystem, match `active`.
    assert kernel is not None
    if not record.formatted:
        return Step.MKFS
    if not spec.active:
        # Mode and size are loaded with the table at the next activation.
        return Step.DEACTIVATE
    if kernel.info.readonly != record.readonly or length_differs(record, kernel):
        return Step.RELOAD
    if fs_needs_growing(record, kernel):
        return Step.GROW_FS
    return None


def spec_changed(record: DeviceRecord, spec: DeviceSpec | None) -> bool:
    """Whether the spec is not the one the record last took: the one test of "did the spec
    change", for the decision and for the drive loop alike."""
    return spec is not None and record.spec_digest != spec.digest


def takes_spec_now(record: DeviceRecord, spec: DeviceSpec | None) -> bool:
    """Whether a changed spec's wishes go into the record before the decision (next_step
    reads them there). Not a Faulty device's: its changed spec is what makes next_step say
    RETRY, and the retry step takes the spec."""
    return spec_changed(record, spec) and record.state != S.FAULTY


def _unwanted(state: DeviceState) -> Decision:
    if state == S.REMOVED:
        return None
    return Step.DEACTIVATE if state in LIVE else Step.REMOVE


def _parent_wait(record: DeviceRecord, parent: DeviceRecord | None) -> Wait | None:
    """A snapshot is taken only of a provisioned, resting, formatted parent."""
    if record.parent is None:
        return None
    if parent is None or not parent.provisioned or parent.state not in RESTING_PROVISIONED:
        state = "not created yet" if parent is None else parent.state
        return Wait(f"waiting for parent {record.parent!r} ({state})")
    if not parent.formatted:
        return Wait(f"waiting for parent {record.parent!r} to get its filesystem")
    return None


def length_differs(record: DeviceRecord, kernel: KernelDevice) -> bool:
    """Whether the mapped table's length is not the record's size."""
    return kernel.table is not None and kernel.table.length != to_sectors(
        Bytes(record.size_bytes)
    )


def fs_needs_growing(record: DeviceRecord, kernel: KernelDevice) -> bool:
    """Only filesystems we made are grown, only unmounted, and only once per size."""
    return (
        record.filesystem != Filesystem.NONE
        and 0 < record.fs_size_bytes < record.size_bytes
        and kernel.info.open_count == 0
        and not kernel.info.readonly
        and record.notice is None
    )


def is_removal(step: Step, spec: DeviceSpec | None) -> bool:
    """Whether a busy device makes this step wait rather than fail: taking a device away
    (never with --force) waits for its holder for as long as it takes."""
    return step == Step.REMOVE or (step == Step.DEACTIVATE and spec is None)


class Planned(NamedTuple):
    """One line of `reconciler plan`: what the next pass does to a device, as a word for
    scripts (`action`) and as prose for people (`summary`)."""

    action: PlanAction
    summary: str


# The action each step is planned as (a create with a parent and a removal are told apart
# from the record and the spec: `describe`).
STEP_ACTIONS: dict[Step, PlanAction] = {
    Step.CREATE: PlanAction.CREATE,
    Step.ACTIVATE: PlanAction.ACTIVATE,
    Step.MKFS: PlanAction.MKFS,
    Step.RELOAD: PlanAction.RELOAD,
    Step.GROW_FS: PlanAction.GROW,
    Step.DEACTIVATE: PlanAction.DEACTIVATE,
    Step.REMOVE: PlanAction.REMOVE,
    Step.VANISHED: PlanAction.VANISHED,
    Step.RECREATE: PlanAction.RECREATE,
    Step.RETRY: PlanAction.RETRY,
}


def describe(record: DeviceRecord, decision: Decision, wanted: bool = True) -> Planned:
    """What `reconciler plan` says a decision will do. A device no spec wants any more
    (`wanted` false) is on its way out: its first step (deactivate) is named as what it
    starts, a removal, so that nobody reads it as a mere deactivation."""
    if not wanted and decision in (Step.DEACTIVATE, Step.REMOVE):
        return Planned(PlanAction.REMOVE, "remove: deactivate, then delete its thin id"
                       if decision == Step.DEACTIVATE else "remove: delete its thin id")
    if isinstance(decision, Wait):
        return Planned(PlanAction.WAIT, f"nothing yet: {decision.reason}")
    if decision is None:
        if record.state == S.FAULTY:
            return Planned(PlanAction.NONE,
                           "nothing: Faulty (change the spec or run `reconciler retry`)")
        return Planned(PlanAction.NONE, "nothing")
    if decision == Step.CREATE and record.parent is not None:
        return Planned(PlanAction.SNAPSHOT, f"snapshot of {record.parent}")
    return Planned(STEP_ACTIONS[decision], decision.value.replace("_", " "))  # "grow filesystem"


# Everything next_step reads of a device, as values, in one flat tuple: its spec, its dm
# device (immutable: its info and table are read off it; the status decides nothing), its
# parent's fields, hold_new, then its record's fields (from _RECORD on). One tuple, not a
# tuple of the record's fields inside another holding the device's info and table again:
# 5 MB less at 50,000 devices.
_Inputs = tuple[Any, ...]
_RECORD = 4


def _fields(record: DeviceRecord | None) -> tuple[Any, ...] | None:
    # Every field, not just those next_step reads today: a rule added later cannot go stale.
    return None if record is None else record_fields(record)


def _same_device(kernel: KernelDevice | None, seen: KernelDevice | None) -> bool:
    """Whether the dm device shows the info and table it showed (another object, equal
    values)."""
    info, table = (None, None) if seen is None else (seen.info, seen.table)
    now_info, now_table = (None, None) if kernel is None else (kernel.info, kernel.table)
    return (info is now_info or info == now_info) and (table is now_table or table == now_table)


class Settled:
    """Devices next_step found with nothing to do, with the inputs it was given.

    `unchanged` is true only when every input is equal to what it was then: the same spec
    (the spec file cache hands back the same object for an unchanged file), the same kernel
    info and table (the observation hands back the same device object for unchanged lines,
    and equal ones compare equal anyway: open count, event number, suspended and read-only
    flags, table length and thin id included), the same record and parent record field by
    field, and the same reason to hold new devices. Anything else, and the device is decided
    again.
    """

    def __init__(self) -> None:
        self._inputs: dict[str, _Inputs] = {}

    def unchanged(self, inputs: Inputs) -> bool:
        """Whether next_step already said None for exactly these inputs."""
        record, spec, kernel, parent, hold_new = inputs
        return self.unchanged_parts(record, spec, kernel, parent, hold_new)

    def unchanged_parts(self, record: DeviceRecord, spec: DeviceSpec | None,
                        kernel: KernelDevice | None, parent: DeviceRecord | None,
                        hold_new: str | None) -> bool:
        """`unchanged` of the inputs given one by one: what a resync's drive loop asks of
        every device, so no Inputs is built for it (and the same device object, which the
        observation hands back for unchanged lines, spares comparing its info and table)."""
        seen = self._inputs.get(record.name)
        if seen is None:
            return False
        seen_spec, seen_kernel, parent_fields, seen_hold = seen[:_RECORD]
        if kernel is not seen_kernel and not _same_device(kernel, seen_kernel):
            return False
        return ((seen_spec is spec or seen_spec == spec)
                and hold_new == seen_hold
                and seen[_RECORD:] == record_fields(record)
                and parent_fields == _fields(parent))

    def split(self, order: Sequence[tuple[str, DeviceSpec | None]],
              records: Mapping[str, DeviceRecord], devices: Mapping[str, KernelDevice],
              prefix: str, hold_new: str | None
              ) -> tuple[list[str], list[tuple[str, DeviceSpec | None]]]:
        """`order`'s wanted devices `unchanged` since they settled (by name), and the rest
        (to be decided): `unchanged_parts` over a resync's every device in one loop
        (`devices` by dm name, each `prefix` + its name)."""
        converged: list[str] = []
        todo: list[tuple[str, DeviceSpec | None]] = []
        unchanged, record_of, device_of = self.unchanged_parts, records.get, devices.get
        for name, spec in order:
            record = record_of(name)
            if spec is not None and record is not None and unchanged(
                    record, spec, device_of(prefix + name),
                    None if record.parent is None else record_of(record.parent), hold_new):
                converged.append(name)
            else:
                todo.append((name, spec))
        return converged, todo

    def remember(self, inputs: Inputs) -> None:
        """next_step said None for these inputs (a device some spec wants)."""
        record, spec, kernel, parent, hold_new = inputs
        assert spec is not None, f"{record.name}: only a wanted device is settled"
        self._inputs[record.name] = (spec, kernel, _fields(parent), hold_new,
                                     *record_fields(record))

    def forget(self, name: str) -> None:
        """The device is being decided again."""
        self._inputs.pop(name, None)

    def __len__(self) -> int:
        return len(self._inputs)


def node_wait(name: str) -> NodeWait:
    """How a device's activations and removals deal with udev. The snapshotter's devices are
    mounted by their /dev/mapper node (the path Mounts returns), which libdevmapper makes
    before the call answers, with udev's rules off for them (NodeWait.NODE): waiting for
    udev's rules too was ~88% of a snapshot's activation (docs/performance.md, issue 26 (i)).
    With the rules on and unwaited for (at 355d0ee) they lost their node: udev, lagging
    under a burst, ran a removed device's stale events after a new device took its minor,
    read the new name from sysfs and unlinked the new device's node at the stale remove;
    and its late blkid probe held a device at Remove. With the rules off, no event of a
    snapshot device makes, replaces or unlinks a node, or opens the device. A spec-file
    device may be mounted by label as soon as a pass ends (`run --once && mount LABEL=...`):
    its pass waits until udev has made the /dev/disk/by-* links."""
    return NodeWait.NODE if is_snapshot_device(name) else NodeWait.UDEV


# mke2fs's extended options for the snapshotter's bases, as containerd's devmapper makes each
# root: the inode tables and the journal zeroed by mkfs, once, in the base every root is a
# snapshot of; lazily (mke2fs's default) ext4lazyinit zeroes them again on every mount of
# every snapshot, writing (and provisioning) blocks a snapshot should not need. nodiscard: a
# fresh thin id maps no block, so mkfs's discard of the whole device has nothing to unmap.
BASE_EXT4_OPTIONS = ("-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0")


def mkfs_options(name: str, filesystem: Filesystem, configured: Sequence[str]
                 ) -> tuple[str, ...]:
    """mkfs's options for a device: the config's `fs_options`, preceded for a snapshotter's
    ext4 base by BASE_EXT4_OPTIONS (an `-E` of the config's comes later and replaces them:
    mke2fs takes its last -E). A spec-file volume keeps mke2fs's lazy init: zeroing a large
    volume's inode tables at mkfs would move its writes into the pass."""
    if filesystem is Filesystem.EXT4 and is_base_device(name):
        return (*BASE_EXT4_OPTIONS, *configured)
    return tuple(configured)
