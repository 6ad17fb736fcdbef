"""reconcile.steps: each step's kernel effect and persisted transitions, run one at a time on
the fake kernel (tests/unit/reconcile/conftest.py's stage)."""

from __future__ import annotations

from errno import EIO

from reconciler.reconcile.desired import apply_spec
from reconciler.reconcile.drive import record_for
from reconciler.reconcile.pass_context import PassContext
from reconciler.reconcile.steps import STEPS
from reconciler.specs import DeviceSpec
from reconciler.states import DeviceState, Step
from reconciler.store import DeviceRecord, Store
from reconciler.testing.fakekernel import FakeKernel, Op
from reconciler.testing.stage import Stage
from reconciler.testing.world import World

S = DeviceState


def _run(ctx: PassContext, record: DeviceRecord, spec: DeviceSpec | None, *steps: Step) -> None:
    for step in steps:
        STEPS[step](ctx, record, spec)


def test_create_provisions_a_thin_id_and_drops_its_intent(stage: Stage) -> None:
    """create: the pool gets a thin id, the row says Created with it, no intent is left."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    ctx = stage.context()
    record = record_for(ctx, "a", spec)
    STEPS[Step.CREATE](ctx, record, spec)
    row = stage.stored("a")
    assert row.state == S.CREATED and row.provisioned
    assert row.device_id is not None and row.device_id in ctx.read_pool_ids()
    assert stage.store.intent("a") is None
    pool = stage.store.pool(stage.world.pool)
    assert pool is not None and pool.transaction_id == ctx.ledger.transaction_id == 1


def test_activate_and_mkfs_map_the_device_and_format_it(stage: Stage) -> None:
    """activate maps the thin id under our name and uuid; mkfs leaves ext4 on it."""
    spec = stage.spec("a", 'filesystem = "ext4"\n')
    ctx = stage.context()
    record = record_for(ctx, "a", spec)
    _run(ctx, record, spec, Step.CREATE, Step.ACTIVATE, Step.MKFS)
    row = stage.stored("a")
    assert row.state == S.ACTIVATED and row.formatted
    device = stage.kernel.devices[stage.kernel_name("a")]
    assert device.live is not None and not device.suspended
    assert device.uuid.endswith(f"-{row.device_id}")
    assert stage.kernel.filesystem(stage.kernel_name("a")) == "ext4"
    assert [h.to_state for h in stage.store.history("a")] == [
        S.CREATING, S.CREATED, S.ACTIVATING, S.ACTIVATED]


def test_a_step_left_in_flight_finishes_without_beginning_again(stage: Stage) -> None:
    """An Activating device (a crash after the begin trigger) is mapped and fires only
    activated: the machine's table says it is past `activate`."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    ctx = stage.context()
    record = record_for(ctx, "a", spec)
    _run(ctx, record, spec, Step.CREATE)
    record.state = S.ACTIVATING
    stage.store.save_device(record)
    ctx = stage.context()
    STEPS[Step.ACTIVATE](ctx, ctx.records["a"], spec)
    assert stage.stored("a").state == S.ACTIVATED
    assert stage.kernel_name("a") in stage.kernel.devices
    last = stage.store.history("a")[-1]
    assert (last.from_state, last.to_state) == (S.ACTIVATING, S.ACTIVATED)


def test_reload_swaps_in_the_new_length_and_leaves_it_running(stage: Stage) -> None:
    """reload: suspend, load and resume; the table has the spec's new length, the device
    runs (not suspended) and rests Resumed."""
    spec = stage.spec("a", 'filesystem = "none"\nsize = "64MiB"\n')
    ctx = stage.context()
    record = record_for(ctx, "a", spec)
    _run(ctx, record, spec, Step.CREATE, Step.ACTIVATE)
    bigger = stage.spec("a", 'filesystem = "none"\nsize = "128MiB"\n')
    apply_spec(record, bigger)
    STEPS[Step.RELOAD](ctx, record, bigger)
    device = stage.kernel.devices[stage.kernel_name("a")]
    assert device.live is not None and device.live.length == (128 << 20) // 512
    assert not device.suspended
    assert stage.stored("a").state == S.RESUMED


def test_deactivate_of_an_open_device_defers_its_removal(stage: Stage) -> None:
    """An open device asked to be inactive is flushed and left to the kernel's deferred
    remove; the row says Deactivated."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    ctx = stage.context()
    record = record_for(ctx, "a", spec)
    _run(ctx, record, spec, Step.CREATE, Step.ACTIVATE)
    stage.kernel.hold_open(stage.kernel_name("a"))
    inactive = stage.spec("a", 'filesystem = "none"\nactive = false\n')
    STEPS[Step.DEACTIVATE](stage.context(), record, inactive)
    assert stage.kernel.devices[stage.kernel_name("a")].deferred_remove
    assert stage.stored("a").state == S.DEACTIVATED
    stage.kernel.release(stage.kernel_name("a"))
    assert stage.kernel_name("a") not in stage.kernel.devices


def test_deactivate_then_remove_deletes_the_thin_id(stage: Stage) -> None:
    """Taking a device away: its dm device goes, then its thin id; the row says Removed."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    ctx = stage.context()
    record = record_for(ctx, "a", spec)
    _run(ctx, record, spec, Step.CREATE, Step.ACTIVATE)
    thin_id = record.device_id
    STEPS[Step.DEACTIVATE](ctx, record, None)
    STEPS[Step.REMOVE](ctx, record, None)
    row = stage.stored("a")
    assert row.state == S.REMOVED and not row.provisioned
    assert stage.kernel_name("a") not in stage.kernel.devices
    assert thin_id not in ctx.read_pool_ids()
    assert stage.store.intent("a") is None


def test_a_snapshot_suspends_its_live_origin_around_create_snap(stage: Stage) -> None:
    """create of a snapshot: its thin id is made from the parent's, the live origin is
    suspended around it (no unsafe snapshot) and runs again after."""
    parent_spec = stage.spec("p", 'filesystem = "ext4"\n')
    ctx = stage.context()
    parent = record_for(ctx, "p", parent_spec)
    _run(ctx, parent, parent_spec, Step.CREATE, Step.ACTIVATE, Step.MKFS)
    child_spec = stage.spec("c", 'parent = "p"\n')
    child = record_for(ctx, "c", child_spec)
    STEPS[Step.CREATE](ctx, child, child_spec)
    row = stage.stored("c")
    assert row.state == S.CREATED and row.origin_id == parent.device_id
    assert row.formatted, "a snapshot carries its parent's filesystem"
    assert stage.kernel.unsafe_snapshots == []
    assert not stage.kernel.devices[stage.kernel_name("p")].suspended
    assert stage.stored("p").state == S.RESUMED


def test_vanished_and_recreate_start_a_removed_name_anew(stage: Stage) -> None:
    """vanished notes a live device the kernel lost; recreate gives a Removed name a new
    life: no thin id, Unknown."""
    spec = stage.spec("a", 'filesystem = "none"\n')
    ctx = stage.context()
    record = record_for(ctx, "a", spec)
    _run(ctx, record, spec, Step.CREATE, Step.ACTIVATE)
    STEPS[Step.VANISHED](ctx, record, spec)
    assert stage.stored("a").state == S.DEACTIVATED
    STEPS[Step.REMOVE](ctx, record, None)
    STEPS[Step.RECREATE](ctx, record, spec)
    row = stage.stored("a")
    assert row.state == S.UNKNOWN
    assert row.device_id is None and not row.formatted


def test_removing_a_device_whose_create_failed_leaves_no_intent(fake_world: World) -> None:
    """A create the kernel refused leaves its intent; removing that device settles it, so a
    restart does not credit the thin id (since given to another device) to the removed name.
    Found by the seeded simulation."""
    fake_world.spec("a", 'filesystem = "none"\n')
    kernel = fake_world.host
    assert isinstance(kernel, FakeKernel)
    kernel.faults.fail(Op.MESSAGE, errno=EIO, verb="create_thin")
    reconciler = fake_world.reconciler()
    reconciler.run_pass()
    assert fake_world.store is not None and fake_world.store.intent("a") is not None
    fake_world.unspec("a")
    fake_world.spec("b", 'filesystem = "none"\n')
    reconciler.run_pass()
    assert fake_world.store.intents() == []
    fake_world.store.close()
    fake_world.store = Store(fake_world.settings.database_path, fake_world.clock)  # restart
    assert fake_world.run_pass().ok
    removed = fake_world.store.device("a")
    assert removed is not None and removed.state == S.REMOVED and not removed.provisioned
