"""The removal guard's rule (holds.judge), table-tested, and the memory it keeps in the store:
holds, confirmations, the window's events, the selection judged under."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.reconcile.holds import RemovalGuard, Selection, judge
from reconciler.store import DeviceRecord, HeldRemoval, HoldCause, Store
from reconciler.testing.world import FakeClock, make_settings
from reconciler.vocabulary import DeviceState


def _held(*names: str, confirmed: bool = False) -> dict[str, HeldRemoval]:
    return {n: HeldRemoval(n, HoldCause.COUNT, "r", 1.0, "s", 2.0 if confirmed else None)
            for n in names}


D = [f"d{i}" for i in range(12)]


@pytest.mark.parametrize(
    ("inferred", "held", "before", "recent", "files", "limit", "changed", "removed", "hold",
     "cause"), [
        (set(), {}, set(), 0, 5, 8, False, set(), set(), None),
        ({"a"}, {}, set(), 0, 5, 8, False, {"a"}, set(), None),
        ({"a"}, {}, set(), 0, 1, 8, False, {"a"}, set(), None),  # the only file: a person
        ({"a", "b"}, {}, set(), 0, 2, 8, False, set(), {"a", "b"}, HoldCause.EVERYTHING),
        (set(D[:8]), {}, set(), 0, 12, 8, False, set(D[:8]), set(), None),  # at the limit
        (set(D[:9]), {}, set(), 0, 12, 8, False, set(), set(D[:9]), HoldCause.COUNT),
        (set(D[:9]), {}, set(), 0, 12, None, False, set(D[:9]), set(), None),  # unlimited
        ({"a", "b"}, {}, set(), 0, 2, None, False, set(), {"a", "b"}, HoldCause.EVERYTHING),
        # The window: 7 let through lately, 2 more would be 9.
        ({"a", "b"}, {}, set(), 7, 12, 8, False, set(), {"a", "b"}, HoldCause.COUNT),
        ({"a"}, {}, set(), 7, 12, 8, False, {"a"}, set(), None),
        # Names, not removals: "gone0" removed again is still one of the 8.
        ({"gone0"}, {}, set(), 8, 12, 8, False, {"gone0"}, set(), None),
        # Held ones stay held; a new file elsewhere changes nothing for them.
        ({"a", "b"}, _held("a", "b"), set(), 0, 3, 8, False, set(), set(), None),
        # Confirmed ones go; the waiting stay.
        ({"a", "b"}, {**_held("a", confirmed=True), **_held("b")}, set(), 0, 3, 8, False,
         {"a"}, set(), None),
        # A removal under way is never judged again.
        ({"a"}, {}, {"a"}, 9, 2, 8, False, {"a"}, set(), None),
        # Held ones count in "every device": one more deletion is held with them.
        ({"a", "b", "c"}, _held("a", "b"), set(), 0, 3, 8, False, set(), {"c"},
         HoldCause.EVERYTHING),
        # A config change holds whatever the count, and takes confirmations back.
        ({"a"}, {}, set(), 0, 5, 8, True, set(), {"a"}, HoldCause.CONFIG),
        ({"a", "b"}, _held("a", confirmed=True), set(), 0, 5, 8, True, set(), {"a", "b"},
         HoldCause.CONFIG),
        (set(), {}, set(), 0, 5, 8, True, set(), set(), None),
    ])
def test_the_removal_guard_rule(inferred: set[str], held: dict[str, HeldRemoval],
                                before: set[str], recent: int, files: int, limit: int | None,
                                changed: bool, removed: set[str], hold: set[str],
                                cause: HoldCause | None) -> None:
    """judge: what goes, what is newly held and why."""
    verdict = judge({*inferred, "snap-1"}, inferred, held, counted_before=before,
                    recent={f"gone{i}" for i in range(recent)}, spec_file_devices=files,
                    limit=limit,
                    config_changed=changed)
    assert verdict.remove == {*removed, "snap-1"}, "the snapshotter's removals always go"
    assert verdict.hold == hold and verdict.cause == cause
    assert verdict.counted == removed - held.keys() - before


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "db", FakeClock())


def test_a_hold_keeps_its_time_and_a_new_selection_takes_its_confirm(store: Store) -> None:
    """Held again under the same selection: held_at and the confirm stay; under another
    selection: held_at stays, the confirm is gone."""
    clock = store.clock
    assert isinstance(clock, FakeClock)
    store.hold_removals(["a"], HoldCause.COUNT, "first", "s1")
    first = store.held_removals()["a"].held_at
    clock.sleep(5)
    store.confirm_held(["a"])
    store.hold_removals(["a"], HoldCause.COUNT, "again", "s1")
    again = store.held_removals()["a"]
    assert (again.held_at, again.confirmed_at, again.reason) == (first, first + 5, "again")
    store.hold_removals(["a"], HoldCause.CONFIG, "reload", "s2")
    moved = store.held_removals()["a"]
    assert (moved.held_at, moved.confirmed_at, moved.cause) == (first, None, HoldCause.CONFIG)
    store.release_holds(["a"])
    assert store.held_removals() == {}


def test_the_guard_remembers_the_selection_only_after_a_complete_pass(tmp_path: Path) -> None:
    """A targeted pass under a new config holds its removals as config-caused and leaves the
    remembered selection; the next complete pass remembers the new one."""
    settings = make_settings(tmp_path, "p")
    store = Store(settings.database_path, FakeClock())
    records = {"a": DeviceRecord("a", DeviceState.ACTIVATED),
               "b": DeviceRecord("b", DeviceState.ACTIVATED)}
    guard = RemovalGuard(settings, store)
    assert guard.removals(records, {"a", "b"}, records, None, False, True, 0.0) == set()
    assert guard.judged() == Selection.of(settings)
    moved = RemovalGuard(replace(settings, node_name="x"), store)
    assert moved.removals(records, {"b"}, {"a"}, None, False, False, 1.0) == set()
    assert store.held_removals()["a"].cause == HoldCause.CONFIG
    assert moved.judged() == Selection.of(settings)
    moved.removals(records, {"b"}, records, None, False, True, 2.0)
    assert moved.judged() == moved.selection and set(moved.waiting()) == {"a"}


def test_a_selection_reads_back_and_refuses_what_is_not_one() -> None:
    """Selection.parse(text) is the selection; other text is None."""
    selection = Selection("/specs", "node\n1")
    assert Selection.parse(selection.text) == selection
    for text in (None, "", "[]", '{"spec_dir": 1, "node_name": "n"}', "{"):
        assert Selection.parse(text) is None
