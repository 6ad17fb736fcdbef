"""Rows to records and back: enums and thin ids are converted once, and a bad row says so."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reconciler.store import (
    ConditionKind,
    DeviceRecord,
    IdAllocator,
    IntentRecord,
    OrphanKind,
    OrphanRecord,
    RequestKind,
    RowError,
    SnapshotRecord,
    Store,
    StoreError,
    TransitionRecord,
    UnknownKind,
)
from reconciler.vocabulary import (
    MAX_THIN_ID,
    NO_LABELS,
    DeviceState,
    Filesystem,
    Kind,
    PoolOp,
    Removal,
    ThinId,
    Trigger,
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "db.sqlite", lambda: 10.0)


def _write(store: Store, sql: str, *params: object) -> None:
    """Change the file as another program (or a newer version) would, past the store."""
    with sqlite3.connect(store.path) as other:
        other.execute(sql, params)


def test_a_device_record_reads_back_with_its_enums_and_thin_ids(store: Store) -> None:
    """State, filesystem and both thin ids come back typed, equal to what was saved."""
    saved = DeviceRecord(name="d", state=DeviceState.RESUMED, device_id=ThinId(MAX_THIN_ID),
                         origin_id=ThinId(0), filesystem=Filesystem.XFS, parent="p")
    store.save_device(saved)
    read = store.device("d")
    assert read == saved
    assert read is not None and read.state is DeviceState.RESUMED
    assert read.filesystem is Filesystem.XFS
    assert type(read.device_id) is ThinId and type(read.origin_id) is ThinId


def test_records_without_labels_share_one_read_only_mapping(store: Store) -> None:
    """A record with no labels holds NO_LABELS, read back as well as new (one mapping for
    50,000 devices, not an empty dict each), and nobody can fill it in for the others;
    labels given are stored and read back as their own dict."""
    assert DeviceRecord(name="d").labels is NO_LABELS
    store.save_device(DeviceRecord(name="d"))
    store.save_device(DeviceRecord(name="e", labels={"team": "web"}))
    bare, labelled = store.device("d"), store.device("e")
    assert bare is not None and bare.labels is NO_LABELS
    assert labelled is not None and labelled.labels == {"team": "web"}
    with pytest.raises(TypeError):
        NO_LABELS["team"] = "web"  # type: ignore[index]
    assert dict(NO_LABELS) == {}


def test_a_snapshot_record_reads_back_with_its_kind_removal_and_filesystem(
        store: Store) -> None:
    """Kind, removal and filesystem of a snapshot are enums after a save and a read."""
    saved = SnapshotRecord(name="snap-1", seq=1, key="k", kind=Kind.COMMITTED,
                           filesystem=Filesystem.EXT4, removal=Removal.PENDING)
    store.save_snapshot(saved)
    read = store.snapshot("snap-1")
    assert read == saved
    assert read is not None and read.kind is Kind.COMMITTED
    assert read.removal is Removal.PENDING
    assert [r.name for r in store.snapshots_with_removal(Removal.PENDING)] == ["snap-1"]
    assert store.snapshots_with_removal(Removal.REQUESTED) == []


def test_intents_transitions_and_orphans_read_back_typed(store: Store) -> None:
    """The op, the states, the trigger and the thin ids of the other tables are typed too."""
    store.save_intent(IntentRecord(device="d", op=PoolOp.CREATE_SNAP, thin_id=ThinId(5),
                                   origin_id=ThinId(2), from_txn=1, to_txn=2, at=1.0))
    store.record_transition(TransitionRecord("d", DeviceState.UNKNOWN, DeviceState.CREATING,
                                             Trigger.CREATE, 1.0))
    store.replace_orphans([OrphanRecord(OrphanKind.THIN_ID, "9", ThinId(9), 2.0)])
    intent = store.intent("d")
    assert intent is not None and intent.op is PoolOp.CREATE_SNAP
    assert type(intent.thin_id) is ThinId and intent.thin_id == 5 and intent.origin_id == 2
    [transition] = store.history("d")
    assert transition.to_state is DeviceState.CREATING and transition.trigger is Trigger.CREATE
    [orphan] = store.orphans()
    assert orphan.kind is OrphanKind.THIN_ID
    assert type(orphan.thin_id) is ThinId and orphan.thin_id == 9


def test_the_columns_hold_the_enums_values(store: Store) -> None:
    """On disk a record is strings and integers: what earlier versions and `sqlite3` read."""
    store.save_device(DeviceRecord(name="d", state=DeviceState.FAULTY, device_id=ThinId(3)))
    with sqlite3.connect(store.path) as other:
        row = other.execute("SELECT state, device_id, filesystem FROM devices").fetchone()
    assert row == ("Faulty", 3, "none")


def test_an_unknown_state_in_a_row_is_a_clear_error(store: Store) -> None:
    """A state this version does not know names the table, the column and the value."""
    store.save_device(DeviceRecord(name="d"))
    _write(store, "UPDATE devices SET state = 'Melting'")
    with pytest.raises(RowError, match=r"devices\.state holds 'Melting', not a DeviceState "
                                       r"\(one of Unknown, Creating, "):
        store.device("d")


def test_a_thin_id_out_of_range_in_a_row_is_a_clear_error(store: Store) -> None:
    """A thin id past 24 bits in a row is refused where the row is read."""
    store.save_device(DeviceRecord(name="d", device_id=ThinId(1)))
    _write(store, "UPDATE devices SET device_id = ?", MAX_THIN_ID + 1)
    with pytest.raises(RowError, match=rf"devices\.device_id: thin id {MAX_THIN_ID + 1}"):
        store.devices()


def test_an_unknown_kind_or_removal_in_a_snapshot_row_is_a_clear_error(store: Store) -> None:
    """A snapshot's kind and removal are checked against their sets when read."""
    store.save_snapshot(SnapshotRecord(name="snap-1", seq=1, key="k", kind=Kind.ACTIVE))
    _write(store, "UPDATE snapshots SET removal = 'someday'")
    with pytest.raises(RowError, match=r"snapshots\.removal holds 'someday', not a Removal"):
        store.snapshot("snap-1")
    _write(store, "UPDATE snapshots SET removal = NULL, kind = 'sideways'")
    with pytest.raises(RowError, match=r"snapshots\.kind holds 'sideways', not a Kind"):
        store.snapshot_by_key("k")


def test_an_unknown_op_in_an_intent_row_is_a_clear_error(store: Store) -> None:
    """A pool change this version cannot recover is refused, not guessed."""
    store.save_intent(IntentRecord(device="d", op=PoolOp.DELETE, thin_id=ThinId(1),
                                   origin_id=None, from_txn=1, to_txn=2, at=1.0))
    _write(store, "UPDATE intents SET op = 'defragment'")
    with pytest.raises(RowError, match=r"intents\.op holds 'defragment', not a PoolOp"):
        store.intents()


def test_requests_and_conditions_read_back_typed_and_a_newer_kind_as_unknown(
        store: Store) -> None:
    """A request or condition kind is its enum; one a newer version wrote is an UnknownKind
    holding the text (reported, never an error: an older daemon must not stop on it)."""
    store.add_request(RequestKind.RETRY, "web")
    _write(store, "INSERT INTO requests (kind, name, at) VALUES ('defragment', '*', 1.0)")
    store.set_condition(ConditionKind.REMOVALS_HELD, "2 held", ["a", "b"])
    _write(store, "INSERT INTO conditions (kind, message, names, count, since, at) "
                  "VALUES ('from_the_future', '?', '[]', 1, 1.0, 1.0)")
    assert [(r.kind, r.name) for r in store.take_requests()] == [
        (RequestKind.RETRY, "web"), (UnknownKind("defragment"), "*")]
    kinds = {c.kind for c in store.conditions()}
    assert kinds == {ConditionKind.REMOVALS_HELD, UnknownKind("from_the_future")}
    held = store.condition(ConditionKind.REMOVALS_HELD)
    assert held is not None and held.names == ("a", "b")


def test_the_allocator_hands_out_checked_thin_ids_and_stops_at_24_bits() -> None:
    """Ids come out as ThinId, lowest free first; the last is 2**24-1, then a clear error."""
    allocator = IdAllocator({0, 2}, max_id=3)
    assert [allocator.take(), allocator.take()] == [1, 3]
    assert type(IdAllocator(()).take()) is ThinId
    with pytest.raises(StoreError, match="no free thin id"):
        allocator.take()
    assert IdAllocator(set(), max_id=MAX_THIN_ID + 5).max_id == MAX_THIN_ID
