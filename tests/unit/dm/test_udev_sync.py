"""The decision to wait for udev (dm.udev_sync): every row of the table, and what an operator
is told where the daemon does not wait."""

from __future__ import annotations

import pytest

from reconciler.dm.udev_sync import (
    CookieProbe,
    UdevNamespaces,
    UdevSync,
    needs_probe,
    udev_sync,
)

C, U, N = CookieProbe.CONFIRMED, CookieProbe.UNCONFIRMED, CookieProbe.NOT_RUN
SAME, OTHER, UNKNOWN = UdevNamespaces.SAME, UdevNamespaces.OTHER, UdevNamespaces.UNKNOWN

# (udev running, namespaces, probe) -> decision. Every combination is a row.
TABLE = [
    # No udev: nothing to wait for, whatever else is known.
    *[(False, ns, probe, UdevSync.NOT_RUNNING) for ns in UdevNamespaces for probe in CookieProbe],
    # udevd seen in our IPC namespace: it confirms our cookies (a probe changes nothing).
    *[(True, SAME, probe, UdevSync.USED) for probe in CookieProbe],
    # udevd seen in another (unshare --ipc, a pod without hostIPC): never waited for.
    *[(True, OTHER, probe, UdevSync.OTHER_NAMESPACE) for probe in CookieProbe],
    # udevd not seen (a PID namespace of our own): the probe cookie decides.
    (True, UNKNOWN, C, UdevSync.USED),
    (True, UNKNOWN, U, UdevSync.UNCONFIRMED),
    (True, UNKNOWN, N, UdevSync.UNPROVEN),
]


def test_the_table_has_every_combination_once() -> None:
    """No input left out, none decided twice."""
    inputs = [(running, ns, probe) for running, ns, probe, _ in TABLE]
    assert len(inputs) == len(set(inputs)) == 2 * len(UdevNamespaces) * len(CookieProbe)


@pytest.mark.parametrize(("running", "namespaces", "probe", "expected"), TABLE, ids=repr)
def test_udev_is_waited_for_only_where_it_was_shown_to_confirm_our_cookies(
        running: bool, namespaces: UdevNamespaces, probe: CookieProbe,
        expected: UdevSync) -> None:
    """Each row: what is proved decides; what cannot be proved is not waited for."""
    assert udev_sync(running, namespaces, probe) is expected


@pytest.mark.parametrize("running", [False, True])
@pytest.mark.parametrize("namespaces", list(UdevNamespaces))
def test_a_probe_is_needed_only_when_udev_runs_where_proc_cannot_tell(
        running: bool, namespaces: UdevNamespaces) -> None:
    """A probe cookie costs a device and up to a few seconds: only when it decides."""
    assert needs_probe(running, namespaces) is (running and namespaces is UNKNOWN)


@pytest.mark.parametrize("sync", list(UdevSync))
def test_only_a_udev_that_confirms_is_waited_for(sync: UdevSync) -> None:
    """waits: USED alone."""
    assert sync.waits is (sync is UdevSync.USED)


@pytest.mark.parametrize("sync", list(UdevSync))
def test_a_udev_that_runs_but_is_not_waited_for_is_a_problem_naming_host_ipc(
        sync: UdevSync) -> None:
    """The condition's message names hostIPC and says the nodes are made by the daemon;
    udev used, or not running at all (the nodes made as always), is no problem."""
    problem = sync.problem
    if sync in (UdevSync.USED, UdevSync.NOT_RUNNING):
        assert problem is None
    else:
        assert problem is not None
        assert "hostIPC: true" in problem and "makes the /dev/mapper nodes itself" in problem
