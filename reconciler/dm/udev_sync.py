"""Whether the daemon waits for udev after the dm calls that make or remove /dev/mapper nodes:
the decision, pure and table-tested (tests/unit/dm/test_udev_sync.py).

libdevmapper's udev cookies are SysV semaphores, made in the caller's IPC namespace; udev's
rules confirm one (`dmsetup udevcomplete`, run by udevd) in udevd's. A daemon in a pod
without `hostIPC` has an IPC namespace of its own: udev never finds its cookies, and every
wait would last the whole udev timeout (168 s instead of 42 s for 3 devices in the VM, and a
dmsetup that waits without a bound). So waiting is decided from what can be proved: udev runs
(its control socket accepts), and either udevd is seen in our IPC namespace, or one probe
cookie is confirmed within a short bound. Otherwise the daemon makes the nodes itself, as
libdevmapper does without udev synchronisation, and says why (the `udev_unreachable`
condition). `dm.udev` gathers the inputs and keeps the decision until udev appears or goes.

`NodeWait` says for one device whether its activations and removals wait for udev's rules
or leave udev out of its node altogether (decided per device by `reconcile.decide.node_wait`).
"""

from __future__ import annotations

from enum import StrEnum


class UdevNamespaces(StrEnum):
    """udevd's IPC namespace against ours, as /proc shows them."""

    SAME = "same"  # every udevd seen is in our IPC namespace
    OTHER = "other"  # every udevd seen is in another one (a pod without hostIPC)
    # No udevd seen (our own PID namespace hides it), its namespace unreadable, or udevds
    # in both: /proc cannot tell, a probe cookie may.
    UNKNOWN = "unknown"


class CookieProbe(StrEnum):
    """What became of one probe cookie (a dm device's resume, udev asked to confirm it)."""

    CONFIRMED = "confirmed"  # udev confirmed it within the bound
    UNCONFIRMED = "unconfirmed"  # it did not: released by us
    NOT_RUN = "not_run"  # not needed, or could not be made (no library, an ioctl failed)


class UdevSync(StrEnum):
    """Whether each create, resume and remove waits for udev (the values are logged)."""

    USED = "used"  # udev confirms our cookies: we wait for it to make the nodes
    NOT_RUNNING = "not_running"  # no udev: we make the nodes, as before
    # udev runs but cannot confirm our cookies: we make the nodes and never wait.
    OTHER_NAMESPACE = "other_ipc_namespace"  # udevd seen in another IPC namespace
    UNCONFIRMED = "unconfirmed"  # udevd not seen; the probe cookie was not confirmed
    UNPROVEN = "unproven"  # udevd not seen; no probe cookie could be made

    @property
    def waits(self) -> bool:
        """True when create, resume and remove wait for udev's confirmation."""
        return self is UdevSync.USED

    @property
    def problem(self) -> str | None:
        """What an operator must know (the `udev_unreachable` condition), or None."""
        return _PROBLEMS.get(self)


_NODES = ("so the daemon makes the /dev/mapper nodes itself and never waits for udev; "
          "run it in the host's IPC namespace (a pod with hostIPC: true) for udev to "
          "make them")
_PROBLEMS = {
    UdevSync.OTHER_NAMESPACE: "udevd runs in another IPC namespace than the daemon and "
                              f"cannot confirm its udev cookies, {_NODES}",
    UdevSync.UNCONFIRMED: "udevd runs but is not visible from the daemon, and udev did not "
                          f"confirm a probe cookie in time, {_NODES}",
    UdevSync.UNPROVEN: "udevd runs but is not visible from the daemon, and no probe cookie "
                       f"could be made to prove that udev confirms its udev cookies, {_NODES}",
}


class NodeWait(StrEnum):
    """What an activation (create + load + resume) and a removal answer after, where udev
    confirms our cookies (`UdevSync.USED`); elsewhere nothing waits for udev whatever this
    says."""

    # A cookie, waited for: udev's rules ran (its /dev/mapper link, /dev/disk/by-* links)
    # before the call answers. For devices people mount by label or uuid.
    UDEV = "udev"
    # No cookie, and udev's rules told to leave the device alone (`RULES_OFF` in the
    # uevent): libdevmapper makes and unlinks the /dev/mapper node itself, and no event of
    # the device, however late udev runs it, makes, replaces or unlinks a node or link, or
    # probes the device. For devices mounted by their /dev/mapper path (containerd's
    # snapshots): 0.08-0.12x of a waited-for activation (docs/performance.md, issue 26 (i)).
    NODE = "node"


# libdevmapper's DM_UDEV_DISABLE_DM_RULES_FLAG (no /dev/mapper link), _SUBSYSTEM_RULES_FLAG,
# _DISK_RULES_FLAG (no blkid probe, no by-* links, no inotify watch) and _OTHER_RULES_FLAG,
# carried in the uevent's DM_COOKIE, read back by 55-dm.rules. udev then never sees a name
# to link: a stale event of a removed device, run after a new device took its minor, once
# read the new name from sysfs and unlinked the new device's node at its remove.
RULES_OFF = 0x0001 | 0x0002 | 0x0004 | 0x0008


def needs_probe(running: bool, namespaces: UdevNamespaces) -> bool:
    """Whether a probe cookie must decide: udev runs and /proc cannot tell where."""
    return running and namespaces is UdevNamespaces.UNKNOWN


def udev_sync(running: bool, namespaces: UdevNamespaces, probe: CookieProbe) -> UdevSync:
    """Wait for udev only where it was shown to confirm our cookies: udevd in our IPC
    namespace, or (not visible) a probe cookie it confirmed. What cannot be proved is not
    waited for: a node made by us costs nothing, a wait for a cookie udev cannot see costs
    the whole udev timeout per call."""
    if not running:
        return UdevSync.NOT_RUNNING
    if namespaces is UdevNamespaces.SAME:
        return UdevSync.USED
    if namespaces is UdevNamespaces.OTHER:
        return UdevSync.OTHER_NAMESPACE
    if probe is CookieProbe.CONFIRMED:
        return UdevSync.USED
    if probe is CookieProbe.UNCONFIRMED:
        return UdevSync.UNCONFIRMED
    return UdevSync.UNPROVEN
