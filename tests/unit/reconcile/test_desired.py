"""desired: the order devices are driven in, and its reuse across passes."""

from __future__ import annotations

from dataclasses import replace

from reconciler.reconcile.desired import Ordering, parents_first
from reconciler.specs import DeviceSpec
from reconciler.units import Bytes
from reconciler.vocabulary import Filesystem


def spec(name: str, parent: str | None = None) -> DeviceSpec:
    """A 64 MiB spec, a snapshot of `parent` if given."""
    return DeviceSpec(name=name, size=Bytes(64 << 20), filesystem=Filesystem.NONE, parent=parent)


def test_ordering_reuses_the_order_only_for_the_same_specs() -> None:
    """Ordering: the same spec objects give the last order back (not computed again); a
    spec that changed its parent, or a new spec, orders them afresh, parents first."""
    ordering = Ordering()
    specs = {"b": spec("b", parent="c"), "a": spec("a"), "c": spec("c")}
    first = ordering.parents_first(specs)
    assert list(first) == parents_first(specs) == ["a", "c", "b"]
    assert ordering.parents_first(dict(specs)) is first
    changed = {**specs, "c": replace(specs["c"], parent="b"), "b": spec("b")}
    assert list(ordering.parents_first(changed)) == ["a", "b", "c"]
    grown = {**changed, "0": spec("0")}
    assert list(ordering.parents_first(grown)) == ["0", "a", "b", "c"]
