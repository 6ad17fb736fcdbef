"""decide.next_step, rule by rule: record + spec + kernel + parent -> step, without a kernel."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from reconciler.dm.types import DeviceInfo, ThinTable
from reconciler.dm.udev_sync import NodeWait
from reconciler.reconcile.decide import (
    STEP_ACTIONS,
    Decision,
    Inputs,
    Settled,
    Wait,
    describe,
    fs_needs_growing,
    is_removal,
    mkfs_options,
    next_step,
    node_wait,
)
from reconciler.reconcile.observe import KernelDevice
from reconciler.specs import DeviceSpec
from reconciler.states import IN_FLIGHT, RESUMES, DeviceState, Step
from reconciler.store import DeviceRecord
from reconciler.units import Bytes, Sectors
from reconciler.vocabulary import Filesystem, PlanAction, ThinId

S = DeviceState
MIB = 1 << 20
SIZE = 64 * MIB
SECTORS = Sectors(SIZE // 512)


def spec(**changes: object) -> DeviceSpec:
    """The spec the record below was made from, with `changes`."""
    base = DeviceSpec(name="d", size=Bytes(SIZE), filesystem=Filesystem.EXT4, digest="v1")
    return replace(base, **changes)  # type: ignore[arg-type]


def record(state: DeviceState, **changes: object) -> DeviceRecord:
    """A provisioned, formatted, active, writable ext4 device of SIZE in `state`."""
    base = DeviceRecord(name="d", state=state, device_id=ThinId(3), size_bytes=SIZE,
                        filesystem=Filesystem.EXT4, provisioned=True, formatted=True,
                        fs_size_bytes=SIZE, spec_digest="v1")
    return replace(base, **changes)  # type: ignore[arg-type]


def kernel(readonly: bool = False, length: Sectors = SECTORS, open_count: int = 0,
           table: bool = True) -> KernelDevice:
    """The device as the kernel maps it."""
    info = DeviceInfo(name="pool-d", uuid="RECONCILER-v1-pool-3", major=254, minor=5,
                      live_table=True, inactive_table=False, suspended=False,
                      readonly=readonly, open_count=open_count, segments=1, events=0)
    return KernelDevice(info=info, table=ThinTable(length, "254:0", ThinId(3)) if table else None)


PARENT = DeviceRecord(name="p", state=S.DEACTIVATED, device_id=ThinId(1), size_bytes=SIZE,
                      filesystem=Filesystem.EXT4, provisioned=True, formatted=True)

# (rule, record, spec, kernel, parent, expected decision)
RULES: list[tuple[str, DeviceRecord, DeviceSpec | None, KernelDevice | None,
                  DeviceRecord | None, Decision]] = [
    # Unwanted devices (no spec): taken away, live ones deactivated first.
    ("unwanted live device is deactivated", record(S.ACTIVATED), None, kernel(), None,
     Step.DEACTIVATE),
    ("unwanted resumed device is deactivated", record(S.RESUMED), None, kernel(), None,
     Step.DEACTIVATE),
    ("unwanted inactive device is removed", record(S.DEACTIVATED), None, None, None,
     Step.REMOVE),
    ("unwanted created device is removed", record(S.CREATED), None, None, None, Step.REMOVE),
    ("unwanted never-made device is removed", record(S.UNKNOWN, provisioned=False), None,
     None, None, Step.REMOVE),
    ("unwanted Faulty device is removed", record(S.FAULTY), None, None, None, Step.REMOVE),
    ("a removed device stays removed", record(S.REMOVED, provisioned=False), None, None,
     None, None),
    # The kernel lost a live device.
    ("a live device the kernel lost has vanished", record(S.ACTIVATED), spec(), None, None,
     Step.VANISHED),
    ("an unwanted live device the kernel lost has vanished", record(S.RESUMED), None, None,
     None, Step.VANISHED),
    # Lives begin and end.
    ("a removed name whose spec came back is recreated", record(S.REMOVED), spec(), None,
     None, Step.RECREATE),
    ("a new device is created", record(S.UNKNOWN, provisioned=False, device_id=None), spec(),
     None, None, Step.CREATE),
    # Faulty: left alone until the spec changes.
    ("a Faulty device with the same spec is left alone", record(S.FAULTY), spec(), None, None,
     None),
    ("a Faulty device whose spec changed is retried", record(S.FAULTY), spec(digest="v2"),
     None, None, Step.RETRY),
    # Snapshots wait for their parent.
    ("a snapshot waits for a parent with no record",
     record(S.UNKNOWN, parent="p", provisioned=False), spec(parent="p"), None, None,
     Wait("waiting for parent 'p' (not created yet)")),
    ("a snapshot waits for a parent being created",
     record(S.UNKNOWN, parent="p", provisioned=False), spec(parent="p"), None,
     replace(PARENT, state=S.CREATING, provisioned=False),
     Wait("waiting for parent 'p' (Creating)")),
    ("a snapshot waits for a parent in a reload",
     record(S.UNKNOWN, parent="p", provisioned=False), spec(parent="p"), None,
     replace(PARENT, state=S.SUSPENDED), Wait("waiting for parent 'p' (Suspended)")),
    ("a snapshot waits for a Faulty parent",
     record(S.UNKNOWN, parent="p", provisioned=False), spec(parent="p"), None,
     replace(PARENT, state=S.FAULTY), Wait("waiting for parent 'p' (Faulty)")),
    ("a snapshot waits for its parent's mkfs",
     record(S.UNKNOWN, parent="p", provisioned=False), spec(parent="p"), None,
     replace(PARENT, formatted=False),
     Wait("waiting for parent 'p' to get its filesystem")),
    ("a snapshot of a resting formatted parent is created",
     record(S.UNKNOWN, parent="p", provisioned=False), spec(parent="p"), None, PARENT,
     Step.CREATE),
    ("a snapshot of a live parent is created",
     record(S.UNKNOWN, parent="p", provisioned=False), spec(parent="p"), None,
     replace(PARENT, state=S.RESUMED), Step.CREATE),
    # Created / Deactivated: activate when wanted, or once for mkfs, or to take it back.
    ("a created device wanted active is activated", record(S.CREATED), spec(), None, None,
     Step.ACTIVATE),
    ("a deactivated device wanted active is activated", record(S.DEACTIVATED), spec(), None,
     None, Step.ACTIVATE),
    ("an unformatted device wanted inactive is activated for its mkfs",
     record(S.CREATED, formatted=False), spec(active=False), None, None, Step.ACTIVATE),
    ("a formatted device wanted inactive rests", record(S.DEACTIVATED),
     spec(active=False), None, None, None),
    ("an inactive device the kernel still maps is taken back by activating",
     record(S.DEACTIVATED), spec(active=False), kernel(), None, Step.ACTIVATE),
    # Live: mkfs once, deactivate, reload, grow the filesystem.
    ("a live unformatted device gets its mkfs", record(S.ACTIVATED, formatted=False),
     spec(), kernel(), None, Step.MKFS),
    ("mkfs comes before deactivation", record(S.ACTIVATED, formatted=False),
     spec(active=False), kernel(), None, Step.MKFS),
    ("a live device wanted inactive is deactivated", record(S.ACTIVATED),
     spec(active=False), kernel(), None, Step.DEACTIVATE),
    ("a device wanted read-only but mapped writable is reloaded",
     record(S.ACTIVATED, readonly=True), spec(readonly=True), kernel(readonly=False), None,
     Step.RELOAD),
    ("a device wanted writable but mapped read-only is reloaded", record(S.RESUMED),
     spec(), kernel(readonly=True), None, Step.RELOAD),
    ("a grown device whose table is shorter is reloaded",
     record(S.ACTIVATED, size_bytes=2 * SIZE), spec(size=Bytes(2 * SIZE)), kernel(), None,
     Step.RELOAD),
    ("a device whose table is unreadable is not reloaded for its length", record(S.ACTIVATED),
     spec(), kernel(table=False), None, None),
    ("a grown unmounted filesystem is grown", record(S.RESUMED, size_bytes=2 * SIZE),
     spec(size=Bytes(2 * SIZE)), kernel(length=Sectors(2 * SECTORS)), None, Step.GROW_FS),
    ("a device at its spec needs nothing", record(S.ACTIVATED), spec(), kernel(), None, None),
    ("a resumed device at its spec needs nothing", record(S.RESUMED), spec(), kernel(), None,
     None),
]


@pytest.mark.parametrize(("rule", "rec", "wanted", "mapped", "parent", "expected"), RULES,
                         ids=[r[0] for r in RULES])
def test_each_rule_names_its_step(rule: str, rec: DeviceRecord, wanted: DeviceSpec | None,
                                  mapped: KernelDevice | None, parent: DeviceRecord | None,
                                  expected: Decision) -> None:
    """Every rule of next_step, one row each: the inputs and the step it names."""
    del rule
    assert next_step(rec, wanted, mapped, parent) == expected


@pytest.mark.parametrize("state", sorted(IN_FLIGHT))
@pytest.mark.parametrize("wanted", [spec(), None], ids=["wanted", "unwanted"])
def test_an_in_flight_state_resumes_its_step_whatever_the_spec_or_kernel(
    state: DeviceState, wanted: DeviceSpec | None
) -> None:
    """A step left in flight (crash, failed attempt) runs again before anything else."""
    for mapped in (kernel(), None):
        assert next_step(record(state), wanted, mapped, None) == RESUMES[state]


@pytest.mark.parametrize(("changes", "mapped", "grows"), [
    ({}, kernel(), True),
    ({"filesystem": Filesystem.NONE}, kernel(), False),  # nothing to grow
    ({"fs_size_bytes": 0}, kernel(), False),  # not made by us (adopted): size unknown
    ({"fs_size_bytes": 2 * SIZE}, kernel(), False),  # already grown
    ({}, kernel(open_count=1), False),  # mounted: the operator grows it where it is
    ({}, kernel(readonly=True), False),
    ({"notice": "grow it while mounted"}, kernel(), False),  # tried once, xfs cannot
])
def test_a_filesystem_is_grown_only_when_ours_unmounted_and_not_tried(
    changes: dict[str, object], mapped: KernelDevice, grows: bool
) -> None:
    """fs_needs_growing: our filesystem, smaller than the device, unmounted, writable."""
    rec = record(S.RESUMED, size_bytes=2 * SIZE, fs_size_bytes=SIZE)
    assert fs_needs_growing(replace(rec, **changes), mapped) is grows  # type: ignore[arg-type]


@pytest.mark.parametrize(("step", "wanted", "removal"), [
    (Step.REMOVE, None, True),
    (Step.REMOVE, spec(), True),  # gc --faulty removes a device that still has a spec
    (Step.DEACTIVATE, None, True),
    (Step.DEACTIVATE, spec(active=False), False),  # deactivation the spec asked for
    (Step.CREATE, spec(), False),
    (Step.RELOAD, None, False),
])
def test_only_taking_a_device_away_waits_for_a_busy_device(
    step: Step, wanted: DeviceSpec | None, removal: bool
) -> None:
    """is_removal: a busy removal waits for its holder instead of going Faulty."""
    assert is_removal(step, wanted) is removal


@pytest.mark.parametrize(("rec", "decision", "action", "text"), [
    (record(S.UNKNOWN), Step.CREATE, PlanAction.CREATE, "create"),
    (record(S.UNKNOWN, parent="p"), Step.CREATE, PlanAction.SNAPSHOT, "snapshot of p"),
    (record(S.ACTIVATED), Step.GROW_FS, PlanAction.GROW, "grow filesystem"),
    (record(S.ACTIVATED), Step.RELOAD, PlanAction.RELOAD, "reload"),
    (record(S.ACTIVATED), Step.VANISHED, PlanAction.VANISHED, "vanished"),
    (record(S.REMOVED), Step.RECREATE, PlanAction.RECREATE, "recreate"),
    (record(S.FAULTY), Step.RETRY, PlanAction.RETRY, "retry"),
    (record(S.ACTIVATED), None, PlanAction.NONE, "nothing"),
    (record(S.FAULTY), None, PlanAction.NONE,
     "nothing: Faulty (change the spec or run `reconciler retry`)"),
    (record(S.UNKNOWN), Wait("waiting for parent 'p' (Creating)"), PlanAction.WAIT,
     "nothing yet: waiting for parent 'p' (Creating)"),
])
def test_plan_describes_each_decision(rec: DeviceRecord, decision: Decision,
                                      action: PlanAction, text: str) -> None:
    """describe: what `reconciler plan` prints for a decision, as a word and in prose."""
    assert describe(rec, decision) == (action, text)


def test_every_step_is_planned_as_an_action() -> None:
    """Each step has its action word, and no two steps share one."""
    assert set(STEP_ACTIONS) == set(Step)
    assert len(set(STEP_ACTIONS.values())) == len(Step)


@pytest.mark.parametrize(("decision", "wanted", "action", "text"), [
    (Step.DEACTIVATE, False, PlanAction.REMOVE, "remove: deactivate, then delete its thin id"),
    (Step.REMOVE, False, PlanAction.REMOVE, "remove: delete its thin id"),
    # The spec says active = false: it stays.
    (Step.DEACTIVATE, True, PlanAction.DEACTIVATE, "deactivate"),
    (Step.REMOVE, True, PlanAction.REMOVE, "remove"),  # gc --faulty: asked for
    (Wait("removals held"), False, PlanAction.WAIT, "nothing yet: removals held"),
])
def test_plan_names_a_removal_as_a_removal(decision: Decision, wanted: bool,
                                           action: PlanAction, text: str) -> None:
    """describe: a device whose spec is gone is planned as a removal, never as a bare
    `deactivate` that reads like the device stays."""
    assert describe(record(S.ACTIVATED), decision, wanted=wanted) == (action, text)


SNAPSHOT = record(S.ACTIVATED, parent="p")
SEEN = (SNAPSHOT, spec(parent="p"), kernel(), PARENT, None)


def _info(**changes: object) -> KernelDevice:
    mapped = kernel()
    return replace(mapped, info=replace(mapped.info, **changes))  # type: ignore[arg-type]


# (what changed since the device was found with nothing to do, the inputs now)
CHANGES: list[tuple[str, tuple[DeviceRecord, DeviceSpec, KernelDevice | None,
                               DeviceRecord | None, str | None]]] = [
    ("the record's state", (replace(SNAPSHOT, state=S.RESUMED), *SEEN[1:])),
    ("a record field next_step does not read today",
     (replace(SNAPSHOT, state_changed_at=5.0), *SEEN[1:])),
    ("the spec", (SNAPSHOT, spec(parent="p", digest="v2"), *SEEN[2:])),
    ("the dm device is gone", (*SEEN[:2], None, *SEEN[3:])),
    ("the open count", (*SEEN[:2], _info(open_count=1), *SEEN[3:])),
    ("the event number", (*SEEN[:2], _info(events=1), *SEEN[3:])),
    ("suspended", (*SEEN[:2], _info(suspended=True), *SEEN[3:])),
    ("read-only", (*SEEN[:2], _info(readonly=True), *SEEN[3:])),
    ("the uuid", (*SEEN[:2], _info(uuid="someone-else"), *SEEN[3:])),
    ("the table's length", (*SEEN[:2], kernel(length=Sectors(SECTORS * 2)), *SEEN[3:])),
    ("the table is gone", (*SEEN[:2], kernel(table=False), *SEEN[3:])),
    ("the parent's record", (*SEEN[:3], replace(PARENT, formatted=False), None)),
    ("new devices are held", (*SEEN[:4], "pool data space below its reserve")),
]


def _split_says_unchanged(settled: Settled, inputs: Inputs) -> bool:
    """Settled.split's verdict on one device's inputs, as a resync's loop gives them (the
    records and dm devices by name, the parent looked up among the records)."""
    record, spec_now, device, parent, hold_new = inputs
    records = {record.name: record, **({} if parent is None else {parent.name: parent})}
    devices = {} if device is None else {f"pool-{record.name}": device}
    converged, todo = settled.split([(record.name, spec_now)], records, devices, "pool-",
                                    hold_new)
    assert len(converged) + len(todo) == 1
    return converged == [record.name]


def test_settled_inputs_equal_to_what_was_decided_are_unchanged() -> None:
    """Settled: the same inputs, equal though not the same objects, skip the decision
    (asked one device at a time, or for a whole resync's order by `split`)."""
    settled = Settled()
    settled.remember(Inputs(*SEEN))
    now = Inputs(replace(SNAPSHOT), spec(parent="p"), kernel(), replace(PARENT), None)
    assert settled.unchanged(now)
    assert _split_says_unchanged(settled, now)
    assert _split_says_unchanged(settled, Inputs(*SEEN))


@pytest.mark.parametrize(("change", "now"), CHANGES, ids=[c[0] for c in CHANGES])
def test_settled_any_changed_input_is_decided_again(
    change: str, now: tuple[DeviceRecord, DeviceSpec, KernelDevice | None,
                            DeviceRecord | None, str | None],
) -> None:
    """Settled: any input of next_step that differs from when the device was found with
    nothing to do (record, spec, dm info or table, parent, hold_new) decides it again."""
    settled = Settled()
    settled.remember(Inputs(*SEEN))
    assert not settled.unchanged(Inputs(*now)), change
    assert not _split_says_unchanged(settled, Inputs(*now)), change


def test_settled_forgets_a_device_being_decided_again() -> None:
    """Settled.forget: a device driven again is not skipped until decided again."""
    settled = Settled()
    settled.remember(Inputs(*SEEN))
    settled.forget(SNAPSHOT.name)
    assert not settled.unchanged(Inputs(*SEEN))
    assert not _split_says_unchanged(settled, Inputs(*SEEN))
    assert len(settled) == 0


def test_settled_keeps_one_flat_tuple_per_device() -> None:
    """What Settled keeps of a device is one tuple: its spec, dm device, parent's fields,
    hold_new and its record's fields, no tuple of them nested and no second reference to
    the device's info or table (read off the immutable device): 5 MB at 50,000 devices."""
    settled = Settled()
    settled.remember(Inputs(*SEEN))
    (kept,) = settled._inputs.values()
    assert len(kept) == 4 + len(fields(DeviceRecord))
    device = SEEN[2]
    assert device is not None
    assert [type(v) for v in kept if isinstance(v, tuple)] == [tuple], "the parent's alone"
    assert not any(v is device.info or v is device.table for v in kept)


@pytest.mark.parametrize(("name", "expected"), [
    ("snap-1", NodeWait.NODE), ("snap-base-1", NodeWait.NODE), ("data", NodeWait.UDEV),
    ("snap-x", NodeWait.UDEV), ("snap-base", NodeWait.UDEV)])
def test_the_snapshotters_devices_leave_udev_out_and_spec_devices_wait(
        name: str, expected: NodeWait) -> None:
    """node_wait: NODE (no cookie, udev's rules off) for the snapshotter's devices, mounted
    by node; UDEV for every other name, spec-file devices that may be mounted by label, the
    snapshotter's look-alikes among them."""
    assert node_wait(name) is expected


LAZY = ("-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0")


@pytest.mark.parametrize(("name", "filesystem", "configured", "expected"), [
    ("snap-base-1", Filesystem.EXT4, (), LAZY),
    # The config's -E comes last: mke2fs takes the last one, so the config's wins.
    ("snap-base-2", Filesystem.EXT4, ("-E", "nodiscard"), (*LAZY, "-E", "nodiscard")),
    ("snap-base-1", Filesystem.XFS, (), ()),  # xfs has no lazy inode-table init
    ("snap-3", Filesystem.EXT4, (), ()),  # a snapshot runs no mkfs; were it to, defaults
    ("data", Filesystem.EXT4, (), ()),  # a spec-file volume keeps mke2fs's lazy init
    ("data", Filesystem.EXT4, ("-m", "0"), ("-m", "0")),
])
def test_only_the_snapshotters_ext4_base_is_made_without_lazy_init(
        name: str, filesystem: Filesystem, configured: tuple[str, ...],
        expected: tuple[str, ...]) -> None:
    """mkfs_options: the base's inode tables and journal zeroed by mkfs, nothing else's."""
    assert mkfs_options(name, filesystem, configured) == expected
