"""Which crash points the real kernel's matrix takes from a clean run's calls."""

from __future__ import annotations

from reconciler.testing.crashing import chosen_points

KINDS = ("dmsetup message", "dmsetup create", "dmsetup remove", "dmsetup suspend",
         "dmsetup resume")


def test_a_batchs_crash_points_are_its_first_and_last_calls_of_each_step() -> None:
    """Of remove3's calls: the removes' and the deletes' first and last, the transaction id,
    no observation; a single device keeps every point."""
    calls = [("dmsetup", "message", "p", "0", "reserve_metadata_snap"),
             ("dmsetup", "message", "p", "0", "release_metadata_snap"),
             *[("dmsetup", "remove", f"p-{n}") for n in "abc"],
             *[("dmsetup", "message", "p", "0", "delete", str(n)) for n in range(3)],
             ("dmsetup", "message", "p", "0", "set_transaction_id", "1", "2"),
             ("thin_ls", "/dev/loop0")]
    batch = {(p.kind, p.count) for p in chosen_points(calls, KINDS, batch=True)}
    assert batch == {("dmsetup remove", 1), ("dmsetup remove", 3), ("dmsetup message", 3),
                     ("dmsetup message", 5), ("dmsetup message", 6)}
    assert len(chosen_points(calls, KINDS, batch=True)) == 2 * len(batch)
    single = {(p.kind, p.count) for p in chosen_points(calls, KINDS, batch=False)}
    assert single == {("dmsetup remove", n) for n in (1, 2, 3)} | {
        ("dmsetup message", n) for n in range(1, 7)}
