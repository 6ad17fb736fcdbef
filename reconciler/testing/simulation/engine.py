"""The simulated daemon and its world: the fake kernel, a store file, spec directories, and
the Reconciler and Snapshotter a restart makes again.

`Simulation` runs what a step asks (through `actions`), the passes the daemon would run
after it, and checks the invariants (`invariants`) after every pass and every step; a crash
(`crashes`) is followed by a restart over the same store file and kernel, sometimes after a
reboot. The first violation ends the run: `SimulationFailed` carries it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable
from contextlib import suppress
from fnmatch import fnmatch
from pathlib import Path

from reconciler.config import Settings
from reconciler.failures import ClassifiedError
from reconciler.reconcile.holds import Selection
from reconciler.reconcile.maintenance import confirm_request
from reconciler.reconcile.pass_context import PassResult
from reconciler.reconcile.reconciler import Reconciler
from reconciler.snapshots import Snapshotter
from reconciler.specs import is_snapshot_device
from reconciler.states import DeviceState
from reconciler.store import RequestKind
from reconciler.testing.crashing import SimulatedCrash
from reconciler.testing.fakekernel import FakeKernel, Thin
from reconciler.testing.simulation.crashes import CrashingKernel, CrashingStore, CrashPlan
from reconciler.testing.simulation.invariants import (
    Content,
    Permits,
    Violation,
    data_kept,
    held_names,
    ids_accounted,
    kernel_agrees,
    live_ids,
    pool_metadata,
    removal_window,
    shared_ids,
    specs_made,
)
from reconciler.testing.snapshotter import snapshotter_over
from reconciler.testing.world import FakeClock, make_settings

S = DeviceState
POOL = "sim"


class SimulationFailed(Exception):
    """An invariant broke: the violation, at which step."""

    def __init__(self, violation: Violation, step: int) -> None:
        super().__init__(f"{violation} (at step {step})")
        self.violation = violation
        self.step = step


class Simulation:
    """One simulated daemon, its kernel and its files, from start to convergence."""

    def __init__(self, root: Path, window: float | None = None,
                 tolerate: frozenset[str] = frozenset()) -> None:
        self.root = root
        self.kernel = FakeKernel()
        self.plan = CrashPlan()
        self.clock = FakeClock()
        for name in ("a", "b"):
            (root / f"specs-{name}").mkdir(parents=True, exist_ok=True)
        self.config: dict[str, object] = {"spec_dir": "a", "node_name": "n1",
                                          "max_removals": "3"}
        self.settings = self.make_settings()
        # An explicit window (seconds) overrides the setting's (or per pass without one).
        self.window = window
        # Invariants whose violations are noted (`tolerated`) and the run goes on: a known
        # open bug's, so that a seed that meets it still hunts for the rest.
        self.tolerate = tolerate
        self.tolerated: list[tuple[int, Violation]] = []
        self.permits = Permits()
        self.permits.limit_set(self.clock(), self.settings.max_removals)
        self.written: dict[str, Content] = {}
        # Each live device's thin id and the fake pool's object for it, at the last look.
        self.seen: dict[str, tuple[int, Thin]] = {}
        self.step_number = 0
        self.restarts = 0
        # The first violation a pass observer saw (it must not raise into the product).
        self.violation: Violation | None = None
        self.store, self.reconciler, self.snapshotter = self._start()

    # -- the process -------------------------------------------------------------------------

    def make_settings(self) -> Settings:
        """The settings the current config says."""
        words: dict[object, object] = {"true": True, "false": False}
        config = {k: int(v) if isinstance(v, str) and v.isdigit() else words.get(v, v)
                  for k, v in self.config.items()}
        spec_dir = self.root / f"specs-{config.pop('spec_dir')}"
        return make_settings(self.root, POOL, spec_dir=str(spec_dir), **config)

    def _start(self) -> tuple[CrashingStore, Reconciler, Snapshotter]:
        store = CrashingStore(self.settings.database_path, self.clock, self.plan)
        reconciler = Reconciler(self.settings, CrashingKernel(self.kernel, self.plan), store,
                                clock=self.clock, pass_observer=self._after_pass)
        snapshotter = snapshotter_over(reconciler, sleep=self.clock.sleep)
        return store, reconciler, snapshotter

    def restart(self, reboot: bool) -> None:
        """The process died (or was stopped): a new one over the same store file and kernel;
        a reboot first loses the kernel's tables (the pool's metadata stays)."""
        self.plan.disarm()
        # A dead process's connection, in whatever state it was left.
        with suppress(Exception):
            self.store.close()
        if reboot:
            self.kernel.reboot()
        self.restarts += 1
        self.store, self.reconciler, self.snapshotter = self._start()

    def call(self, what: str, action: Callable[..., object], *args: object,
             expected: tuple[type[Exception], ...] = ()) -> object:
        """Call the daemon: a crash restarts it; an exception that is neither a crash, one
        of the answers `expected`, nor a kernel failure a fault explains is the daemon dying."""
        faulted = self.kernel.faults.pending
        try:
            return action(*args)
        except SimulationFailed:
            raise
        except expected:
            pass
        except SimulatedCrash:
            self.restart(reboot=False)
        except ClassifiedError as exc:
            if not faulted:
                self.fail("daemon-died", f"{what} raised {type(exc).__name__}: {exc} with no "
                          "fault injected")
        except Exception as exc:  # noqa: BLE001 - what the daemon must never do is the finding
            self.fail("daemon-died", f"{what} raised {type(exc).__name__}: {exc}")
        finally:
            self.raise_seen()
        return None

    def raise_seen(self) -> None:
        """Raise what a pass observer saw."""
        if self.violation is not None:
            violation, self.violation = self.violation, None
            raise SimulationFailed(violation, self.step_number)

    def run_pass(self, only: Iterable[str] | None = None) -> PassResult | None:
        """One pass, as the daemon's loop runs it (targeted at `only`, else full)."""
        names = None if only is None else sorted(only)
        result = self.call("a pass", self.reconciler.run_pass, names)
        return result if isinstance(result, PassResult) else None

    def reconfigure(self) -> None:
        """SIGHUP: the new settings for the running Reconciler and Snapshotter."""
        before = self.settings
        self.settings = self.make_settings()
        if self._selection(before) != self._selection(self.settings):
            self._selection_changed()
        if before.max_removals != self.settings.max_removals:
            self.permits.limit_set(self.clock(), self.settings.max_removals)
        self.call("reconfigure", self.reconciler.reconfigure, self.settings)
        self.snapshotter.reconfigure(self.settings)

    # -- what the spec files ask -------------------------------------------------------------

    @staticmethod
    def _selection(settings: Settings) -> tuple[Path, str]:
        return settings.specs_path, settings.node_name

    def present(self, name: str, settings: Settings | None = None) -> bool:
        """Whether a spec file keeps `name` under this selection: there is one (valid or
        not, any kind of file), and a valid one's `nodes` select this node."""
        settings = settings or self.settings
        path = settings.specs_path / f"{name}.toml"
        if not path.is_symlink() and not path.exists():
            return False
        if not path.is_file() or path.is_symlink():
            return True
        try:
            nodes = tomllib.loads(path.read_text()).get("nodes")
        except (ValueError, UnicodeDecodeError):
            return True
        if not isinstance(nodes, list):
            return True
        return any(fnmatch(settings.node_name, str(glob)) for glob in nodes)

    def spec_changed(self, names: Iterable[str], before: dict[str, bool]) -> None:
        """Spec files of `names` changed (their presence was `before`)."""
        for name in names:
            now = self.present(name)
            if now and not self._removing(name):
                self.permits.wanted(name)
            elif not now:
                if before.get(name, False):
                    self.permits.spec_gone(name, self.clock())
                if self.has_file(name):
                    # A file we cannot judge (invalid, or for another node) may be a spec the
                    # daemon rejects, which keeps the device and ends its hold.
                    self.permits.held.discard(name)

    def has_file(self, name: str) -> bool:
        """Whether spec_dir has an entry named for `name` (of any kind)."""
        path = self.settings.specs_path / f"{name}.toml"
        return path.is_symlink() or path.exists()

    def _removing(self, name: str) -> bool:
        """Whether the device's removal is under way (its thin id may be deleted already): a
        spec back now does not stop it, the device is made again after."""
        record = self.store.device(name)
        return record is not None and record.state == S.REMOVING

    def _selection_changed(self) -> None:
        """spec_dir or node_name changed: what the new selection leaves out is lost to a
        config change, what it keeps is wanted."""
        records = {r.name for r in self.store.devices() if r.state != S.REMOVED
                   and not is_snapshot_device(r.name)}
        lost = {n for n in records if not self.present(n)}
        for name in records - lost:
            if not self._removing(name):
                self.permits.wanted(name)
        granted = {e.name for e in self.store.removal_events() if e.open}
        self.permits.selection_changed(lost, granted)

    # -- checks ------------------------------------------------------------------------------

    def fail(self, invariant: str, detail: str) -> None:
        """End the run on a violation."""
        raise SimulationFailed(Violation(invariant, detail), self.step_number)

    def _after_pass(self, targeted: bool, result: PassResult | None, seconds: float) -> None:
        """After every pass (the daemon's, a snapshotter call's; a crashed one's too): what
        was removed was asked for, not too many at once, no thin id shared, holds seen."""
        del targeted, result, seconds
        if self.violation is None:
            self.violation = self.check_removals()

    def check_removals(self) -> Violation | None:
        """Judge every device gone since the last look; note what is held now.

        Gone is the kernel's word: its thin id deleted, or deleted and made again (the pool's
        metadata holds another thin there: a removal and a new device in one pass), or its
        record no longer live."""
        store = self.store
        now_ids = live_ids(store)
        metadata = pool_metadata(self.kernel, self.settings)
        thins = metadata.thins if metadata is not None else {}
        before = len(self.permits.inferred)
        found: list[Violation | None] = []
        for name, (thin_id, thin) in sorted(self.seen.items()):
            if thins.get(thin_id) is thin and now_ids.get(name) is not None:
                continue  # there still (a record moved to another id: the old one is kept)
            self.written.pop(name, None)
            found.append(self.permits.judge(name, store, self.clock()))
        self.seen = {n: (i, thins[i]) for n, i in now_ids.items() if i in thins}
        window = self.window if self.window is not None else removal_window(self.settings)
        found.append(self.permits.over_limit(window, self.clock(),
                                             len(self.permits.inferred) - before))
        found.append(shared_ids(store))
        # A hold the store still lists for a name with a spec file again (by our own look at
        # the files: any file, for a spec we cannot judge, one invalid or for another node,
        # may be one the daemon rejects, and a rejected spec keeps its device) ends at the
        # daemon's next pass: not a hold to enforce.
        self.permits.saw_held({n for n in held_names(store) if not self.has_file(n)})
        for violation in found:
            if violation is not None and violation.invariant in self.tolerate:
                self.tolerated.append((self.step_number, violation))
            elif violation is not None:
                return violation
        return None

    def confirm(self, names: set[str]) -> None:
        """`reconciler confirm-removals NAME...`: the request the control socket queues (the
        one place that knows its form)."""
        self.permits.confirm(names)
        self.call("add_request", self.store.add_request, RequestKind.CONFIRM_REMOVALS,
                  confirm_request(names, Selection.of(self.settings)))

    # -- the end -----------------------------------------------------------------------------

    def converge(self, confirm: bool = False, max_passes: int = 30) -> None:
        """Faults off, no crash to come, every Faulty device retried (and, if `confirm`, the
        held removals confirmed): passes until nothing changes; then every record must match
        the kernel and every thin id be accounted."""
        self.plan.disarm()
        self.kernel.faults.clear()
        held = held_names(self.store)
        if confirm and held:
            self.confirm(held)
        for record in self.store.devices():
            if record.state == S.FAULTY:
                self.call("add_request", self.store.add_request, RequestKind.RETRY,
                          record.name)
        last: object = None
        for _ in range(max_passes):
            result = self.run_pass()
            seen = self._fingerprint()
            # Nothing changed and no retry is due: what still waits, waits for a person.
            if result is not None and result.next_retry_at is None and seen == last:
                break
            last = seen
            due = result.next_retry_at if result is not None else None
            self.clock.now = max(self.clock.now + 1, due or 0.0)
        else:
            self.fail("not-converged", f"still changing after {max_passes} passes")
        wanted = {n for n in self.spec_files() if self.present(n)}
        for violation in (kernel_agrees(self.store, self.kernel, self.settings),
                          specs_made(self.store, wanted),
                          ids_accounted(self.store, self.kernel, self.settings),
                          data_kept(self.written, self.kernel, self.settings)):
            if violation is not None:
                raise SimulationFailed(violation, self.step_number)

    def _fingerprint(self) -> tuple[object, ...]:
        records = tuple(sorted((r.name, r.state, r.device_id, r.active)
                               for r in self.store.devices()))
        return records, tuple(sorted(self.kernel.devices))

    # -- what the next step may depend on (schedule.Scene) ------------------------------------

    def spec_files(self) -> list[str]:
        """Names with a regular spec file in the current spec_dir, sorted."""
        return sorted(p.name.removesuffix(".toml") for p in self.settings.specs_path.iterdir()
                      if p.name.endswith(".toml") and p.is_file() and not p.is_symlink()
                      and p.name.isascii())

    def device_names(self) -> list[str]:
        """Names of the live managed devices, sorted."""
        return sorted(r.name for r in self.store.devices() if r.state != S.REMOVED)

    def snapshot_keys(self, kind: str) -> list[str]:
        """Live snapshot keys of a kind, sorted."""
        return sorted(r.key for r in self.store.live_snapshots()
                      if r.kind == kind and r.removal is None)

    def held(self) -> list[str]:
        """Names reported held now, sorted."""
        return sorted(held_names(self.store))
