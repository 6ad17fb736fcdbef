"""reconcile.maintenance: operator requests (retry, gc, adopt, confirmed removals, a kind a newer
version wrote), suspended devices found at the start of a pass, and orphans, on the fake kernel
(tests/unit/reconcile/conftest.py's stage); results read from the store and the kernel."""

from __future__ import annotations

import errno
import json
import sqlite3

from reconciler.reconcile.drive import drive
from reconciler.reconcile.holds import Selection
from reconciler.reconcile.maintenance import (
    RequestOutcome,
    confirm_request,
    find_orphans,
    resume_suspended,
    take_requests,
)
from reconciler.reconcile.pass_context import PassContext, PassResult
from reconciler.states import DeviceState
from reconciler.store import HoldCause, OrphanKind, OrphanRecord, RequestKind
from reconciler.testing.fakekernel.faults import Op
from reconciler.testing.stage import Stage
from reconciler.units import Sectors
from reconciler.vocabulary import ThinId

S = DeviceState


def _converge(stage: Stage, name: str, text: str = 'filesystem = "none"\n') -> None:
    """Drive a device to its spec (created and activated)."""
    result = PassResult()
    drive(stage.context(), name, stage.spec(name, text), result)
    assert result.converged == [name]


def _faulty_at_create(stage: Stage, name: str) -> None:
    """A device the pool refused to provision (EINVAL): Faulty at create, no thin id made."""
    stage.kernel.faults.fail(Op.MESSAGE, stage.world.pool, errno=errno.EINVAL,
                             verb="create_thin")
    result = PassResult()
    drive(stage.context(), name, stage.spec(name, 'filesystem = "none"\n'), result)
    assert stage.stored(name).state == S.FAULTY


def _faulty_at_activate(stage: Stage, name: str) -> None:
    """A device whose thin id was made but whose dm device the kernel refused (EINVAL)."""
    stage.kernel.faults.fail(Op.CREATE, stage.kernel_name(name), errno=errno.EINVAL)
    result = PassResult()
    drive(stage.context(), name, stage.spec(name, 'filesystem = "none"\n'), result)
    row = stage.stored(name)
    assert row.state == S.FAULTY and row.provisioned and row.device_id is not None


def _faulty_with_a_create_the_pool_took(stage: Stage, name: str) -> int:
    """A device whose create_thin the pool took but whose set_transaction_id it refused
    (EINVAL): Faulty at create, its thin id in the pool, the create's intent kept for its
    retry to settle. Returns the thin id."""
    stage.kernel.faults.fail(Op.MESSAGE, stage.world.pool, errno=errno.EINVAL,
                             verb="set_transaction_id")
    result = PassResult()
    drive(stage.context(), name, stage.spec(name, 'filesystem = "none"\n'), result)
    row = stage.stored(name)
    assert row.state == S.FAULTY and row.device_id is not None
    assert stage.store.intent(name) is not None
    assert row.device_id in _pool_ids(stage)
    return row.device_id


def _make_orphan(stage: Stage, thin_id: int) -> None:
    """A thin id made in the pool behind the store's back (another tool, a lost row)."""
    ctx = stage.context()
    ctx.pool.create_thin(ThinId(thin_id), ctx.pool.status().transaction_id)


def _take(stage: Stage) -> tuple[PassContext, dict[int, RequestOutcome]]:
    """Run the queued requests in a fresh pass context, as a pass starts."""
    ctx = stage.context()
    ctx.read_pool_ids()
    outcomes: dict[int, RequestOutcome] = {}
    take_requests(ctx, stage.engine.load_specs, outcomes)
    return ctx, outcomes


def _pool_ids(stage: Stage) -> set[int]:
    return stage.context().read_pool_ids()


def _transaction_ids(stage: Stage, ctx: PassContext) -> tuple[int, int]:
    """The pool's transaction id in the kernel and in the store, read after `ctx`'s work
    (a new context would copy the kernel's into the store first)."""
    pool = stage.store.pool(stage.world.pool)
    assert pool is not None
    return ctx.pool.status().transaction_id, pool.transaction_id


# -- take_requests --------------------------------------------------------------------------


def test_retry_takes_a_faulty_device_out_of_faulty(stage: Stage) -> None:
    """retry: the Faulty row goes back to Unknown with its error cleared, and the next drive
    makes the device."""
    _faulty_at_create(stage, "a")
    request = stage.store.add_request(RequestKind.RETRY, "a")
    _ctx, outcomes = _take(stage)
    assert outcomes[request] == RequestOutcome(
        "a taken out of Faulty (it had failed at create)", names=("a",))
    row = stage.stored("a")
    assert (row.state, row.error, row.error_step, row.attempts) == (S.UNKNOWN, None, None, 0)
    assert not stage.store.has_requests()
    _converge(stage, "a")
    assert stage.stored("a").state == S.ACTIVATED
    assert stage.kernel_name("a") in stage.kernel.devices


def test_a_refused_request_gives_its_error_and_the_next_request_still_runs(
        stage: Stage) -> None:
    """A retry of a device that is not Faulty is refused with the reason; the retry queued
    after it still takes its device out of Faulty; the healthy device is untouched."""
    _converge(stage, "ok")
    _faulty_at_create(stage, "bad")
    refused = stage.store.add_request(RequestKind.RETRY, "ok")
    missing = stage.store.add_request(RequestKind.RETRY, "nobody")
    taken = stage.store.add_request(RequestKind.RETRY, "bad")
    _ctx, outcomes = _take(stage)
    assert outcomes[refused] == RequestOutcome(error="'ok' is not Faulty (Activated)",
                                               names=("ok",))
    assert outcomes[missing] == RequestOutcome(
        error="'nobody' is not Faulty (no such device)", names=("nobody",))
    assert outcomes[taken].error is None
    assert stage.stored("bad").state == S.UNKNOWN
    assert stage.stored("ok").state == S.ACTIVATED
    assert stage.store.device("nobody") is None
    assert not stage.store.has_requests()


def test_gc_orphans_deletes_the_unmanaged_thin_id_and_keeps_the_managed_ones(
        stage: Stage) -> None:
    """gc-orphans: the id nobody manages leaves the pool, the managed one stays, and the
    transaction id moved by one in the kernel and the store alike."""
    _converge(stage, "a")
    managed = stage.stored("a").device_id
    _make_orphan(stage, 7)
    before = stage.context().pool.status().transaction_id
    request = stage.store.add_request(RequestKind.GC_ORPHANS, "*")
    ctx, outcomes = _take(stage)
    assert outcomes[request] == RequestOutcome("orphan thin ids deleted: [7]")
    assert _transaction_ids(stage, ctx) == (before + 1, before + 1)
    assert _pool_ids(stage) == {managed}
    assert stage.stored("a").state == S.ACTIVATED


def test_gc_orphans_leaves_an_orphan_whose_dm_device_is_active(stage: Stage) -> None:
    """An orphan id that a dm device of our pool maps is in use: it stays in the pool, and
    the outcome says so."""
    _make_orphan(stage, 7)
    pool = stage.context().pool
    pool.client.create(stage.kernel_name("stray"),
                       pool.thin_table(ThinId(7), Sectors(8192)).line(), "someone-else")
    request = stage.store.add_request(RequestKind.GC_ORPHANS, "*")
    _ctx, outcomes = _take(stage)
    assert outcomes[request] == RequestOutcome(
        "orphan thin ids deleted: none; left in use: [7]")
    assert 7 in _pool_ids(stage)
    assert stage.kernel.devices[stage.kernel_name("stray")].live is not None


def test_gc_faulty_releases_every_faulty_device_and_nothing_else(stage: Stage) -> None:
    """gc-faulty: the Faulty device's thin id leaves the pool and its row says Removed; the
    Activated neighbour keeps its id and its dm device."""
    _converge(stage, "ok")
    _faulty_at_activate(stage, "bad")
    bad_id = stage.stored("bad").device_id
    request = stage.store.add_request(RequestKind.GC_FAULTY, "*")
    _ctx, outcomes = _take(stage)
    assert outcomes[request] == RequestOutcome("1 Faulty devices released", names=("bad",))
    row = stage.stored("bad")
    assert row.state == S.REMOVED and not row.provisioned
    assert bad_id not in _pool_ids(stage)
    assert stage.stored("ok").device_id in _pool_ids(stage)
    assert stage.kernel_name("ok") in stage.kernel.devices
    assert stage.kernel_name("bad") not in stage.kernel.devices
    assert stage.store.intent("bad") is None


def test_adopt_makes_an_orphan_thin_id_the_named_device(stage: Stage) -> None:
    """adopt NAME with a thin id: the orphan becomes the device of NAME's spec, provisioned
    and taken as formatted (its blocks are someone's data); no orphan is left."""
    _make_orphan(stage, 5)
    stage.spec("found", 'size = "64MiB"\nfilesystem = "ext4"\n')
    request = stage.store.add_request(RequestKind.ADOPT, "found", 5)
    ctx, outcomes = _take(stage)
    assert outcomes[request] == RequestOutcome("thin id 5 adopted as found", names=("found",))
    row = stage.stored("found")
    assert (row.device_id, row.provisioned, row.formatted, row.fs_size_bytes) == (
        5, True, True, 0)
    assert row.state != S.FAULTY
    find_orphans(ctx)
    assert stage.store.orphans() == []
    assert 5 in _pool_ids(stage)


def test_adopt_of_an_id_that_is_not_an_orphan_is_refused(stage: Stage) -> None:
    """adopt of a managed id (or one the pool does not have) is refused; no row is made and
    the managed device keeps its id."""
    _converge(stage, "a")
    managed = stage.stored("a").device_id
    assert managed is not None
    stage.spec("b", 'filesystem = "none"\n')
    taken = stage.store.add_request(RequestKind.ADOPT, "b", managed)
    absent = stage.store.add_request(RequestKind.ADOPT, "b", 99)
    _ctx, outcomes = _take(stage)
    assert outcomes[taken].error == f"adopt b: thin id {managed} is not an orphan of the pool"
    assert outcomes[absent].error == "adopt b: thin id 99 is not an orphan of the pool"
    assert stage.store.device("b") is None
    assert stage.stored("a").device_id == managed


def test_confirm_removals_marks_the_held_names_it_carries(stage: Stage) -> None:
    """confirm-removals: the held names the request carries are marked confirmed in the
    store (the pass then removes them), a name not held is refused; the request itself
    removes nothing."""
    _converge(stage, "a")
    selection = Selection.of(stage.world.settings)
    stage.store.hold_removals(["a"], HoldCause.COUNT, "test", selection.text)
    request = stage.store.add_request(RequestKind.CONFIRM_REMOVALS,
                                      confirm_request(["b", "a"], selection))
    _ctx, outcomes = _take(stage)
    assert outcomes[request] == RequestOutcome("1 removals confirmed", error="b: not held",
                                               names=("a",))
    assert stage.store.held_removals()["a"].confirmed_at is not None
    assert stage.stored("a").state == S.ACTIVATED
    assert stage.kernel_name("a") in stage.kernel.devices


def test_confirm_removals_under_another_config_is_refused(stage: Stage) -> None:
    """A confirm sent with another config (node_name) than the hold's and the daemon's
    confirms nothing and says why."""
    _converge(stage, "a")
    mine = Selection.of(stage.world.settings)
    stage.store.hold_removals(["a"], HoldCause.CONFIG, "test", mine.text)
    other = Selection(mine.spec_dir, "typo-node")
    request = stage.store.add_request(RequestKind.CONFIRM_REMOVALS,
                                      confirm_request(["a"], other))
    _ctx, outcomes = _take(stage)
    error = outcomes[request].error
    assert error is not None and "held under another config" in error
    assert stage.store.held_removals()["a"].confirmed_at is None


def test_an_unknown_request_kind_is_answered_and_dropped_without_stopping_the_others(
        stage: Stage) -> None:
    """A row a newer version wrote ('defragment') is answered "unknown request" and taken off
    the queue; the retry queued after it still runs."""
    _faulty_at_create(stage, "a")
    with sqlite3.connect(stage.store.path) as other:  # a newer CLI, past this store
        other.execute("INSERT INTO requests (kind, name, at) VALUES ('defragment', '*', 1.0)")
    retry = stage.store.add_request(RequestKind.RETRY, "a")
    _ctx, outcomes = _take(stage)
    unknown = min(outcomes)
    assert unknown != retry
    assert outcomes[unknown] == RequestOutcome(error="unknown request 'defragment'")
    assert outcomes[retry].error is None
    assert stage.stored("a").state == S.UNKNOWN
    assert not stage.store.has_requests()


def test_a_kernel_error_in_a_request_is_its_error_and_the_next_request_still_runs(
        stage: Stage) -> None:
    """gc-orphans whose delete the pool refuses (EBUSY): the request answers with the
    kernel's error, the orphan stays, the transaction id does not move, and the
    confirm-removals queued after it is still taken."""
    _make_orphan(stage, 7)
    before = stage.context().pool.status().transaction_id
    stage.kernel.faults.fail(Op.MESSAGE, stage.world.pool, errno=errno.EBUSY, verb="delete")
    gc = stage.store.add_request(RequestKind.GC_ORPHANS, "*")
    confirm = stage.store.add_request(RequestKind.CONFIRM_REMOVALS, json.dumps(["x"]))
    ctx, outcomes = _take(stage)
    assert _transaction_ids(stage, ctx) == (before, before)
    error = outcomes[gc].error
    assert error is not None and "delete 7" in error and "busy" in error.lower()
    assert outcomes[confirm] == RequestOutcome("0 removals confirmed", error="x: not held")
    assert 7 in _pool_ids(stage)


# -- resume_suspended ---------------------------------------------------------------------


def test_a_device_of_ours_found_suspended_is_resumed(stage: Stage) -> None:
    """A device of ours left suspended (a crash between suspend and resume) runs again, and
    the pass's view says so."""
    _converge(stage, "a")
    stage.context().pool.client.suspend(stage.kernel_name("a"))
    ctx = stage.context()
    seen = ctx.obs.devices[stage.kernel_name("a")]
    assert seen.info.suspended
    resume_suspended(ctx)
    assert not stage.kernel.devices[stage.kernel_name("a")].suspended
    assert not ctx.obs.devices[stage.kernel_name("a")].info.suspended
    assert stage.stored("a").state == S.ACTIVATED


def test_a_suspended_device_whose_uuid_is_not_ours_is_left_alone(stage: Stage) -> None:
    """A device named like ours but with someone else's uuid stays suspended."""
    _converge(stage, "a")
    ctx = stage.context()
    stranger = stage.kernel_name("stranger")
    ctx.pool.client.create(stranger, "0 8 zero", "someone-else")
    ctx.pool.client.suspend(stranger)
    resume_suspended(stage.context())
    assert stage.kernel.devices[stranger].suspended
    assert stage.kernel.devices[stranger].uuid == "someone-else"


# -- find_orphans -------------------------------------------------------------------------


def test_an_unmanaged_thin_id_is_recorded_as_an_orphan_and_kept(stage: Stage) -> None:
    """An id the pool has and the store does not manage is an orphan thin id in the store;
    the pool still has it."""
    _converge(stage, "a")
    _make_orphan(stage, 7)
    ctx = stage.context()
    ctx.read_pool_ids()
    find_orphans(ctx)
    assert stage.store.orphans() == [
        OrphanRecord(OrphanKind.THIN_ID, "7", ThinId(7), stage.world.clock())]
    assert 7 in _pool_ids(stage)


def test_a_dm_device_of_ours_without_a_table_is_an_orphan_and_kept(stage: Stage) -> None:
    """A dm device under our prefix with our uuid but no table (a create cut short) is an
    orphan device, its thin id read from the uuid; it is not removed."""
    name = stage.kernel_name("ghost")
    stage.kernel.model.create(name, f"RECONCILER-v1-{stage.world.pool}-9")
    ctx = stage.context()
    assert ctx.obs.devices[name].table is None
    ctx.read_pool_ids()
    find_orphans(ctx)
    assert stage.store.orphans() == [
        OrphanRecord(OrphanKind.DEVICE, name, ThinId(9), stage.world.clock())]
    assert name in stage.kernel.devices


def test_a_faulty_devices_thin_id_with_a_pending_create_is_not_an_orphan(
        stage: Stage) -> None:
    """The thin id a Faulty device's unsettled create made belongs to that device (its
    retry rolls the intent forward): it is not recorded as an orphan."""
    _faulty_with_a_create_the_pool_took(stage, "a")
    ctx = stage.context()
    ctx.read_pool_ids()
    find_orphans(ctx)
    assert stage.store.orphans() == []


def test_adopt_of_a_faulty_devices_pending_thin_id_is_refused(stage: Stage) -> None:
    """adopt of the thin id a Faulty device's unsettled create made is refused: else the
    retry of that device rolls its create forward and two devices map one thin id."""
    thin_id = _faulty_with_a_create_the_pool_took(stage, "a")
    stage.spec("b", 'filesystem = "none"\n')
    adopt = stage.store.add_request(RequestKind.ADOPT, "b", thin_id)
    stage.store.add_request(RequestKind.RETRY, "a")
    _ctx, outcomes = _take(stage)
    assert outcomes[adopt].error is not None
    assert stage.store.device("b") is None
    owners = [r.name for r in stage.store.devices(include_removed=True)
              if r.device_id == thin_id and r.provisioned]
    assert owners == ["a"]
