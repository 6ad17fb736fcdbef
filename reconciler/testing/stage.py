"""A stage for reconcile's module tests (test support): a fake kernel with the pool up, a
reconciler over it, and pass contexts built as a pass builds them, so one step or one drive
can be run alone and its result read back from the store and the fake kernel. The `stage`
fixture (tests/unit/reconcile/conftest.py) hands out a fresh one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reconciler.reconcile import recovery
from reconciler.reconcile.observe import observe
from reconciler.reconcile.pass_context import PassContext
from reconciler.reconcile.reconciler import Reconciler
from reconciler.reconcile.retry import RetryPolicy
from reconciler.specs import DeviceSpec
from reconciler.store import DeviceRecord, Store
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.world import World, make_settings

# No jitter: retry times are exact.
POLICY = RetryPolicy(initial=1.0, maximum=4.0, max_attempts=3, jitter=0.0)


@dataclass
class Stage:
    """A world on the fake kernel and a reconciler whose pool is up (no device yet)."""

    world: World
    engine: Reconciler

    @property
    def kernel(self) -> FakeKernel:
        assert isinstance(self.world.host, FakeKernel)
        return self.world.host

    @property
    def store(self) -> Store:
        assert self.world.store is not None
        return self.world.store

    def kernel_name(self, name: str) -> str:
        return f"{self.world.pool}-{name}"

    def spec(self, name: str, text: str = "") -> DeviceSpec:
        """Write a spec file and give back the spec the reconciler reads from it."""
        self.world.spec(name, text)
        return self.engine.load_specs().specs[name]

    def stored(self, name: str) -> DeviceRecord:
        """The device's row as the store has it now."""
        record = self.store.device(name)
        assert record is not None, f"no row for {name}"
        return record

    def restart(self) -> None:
        """What a restarted daemon has: a new store connection and a new reconciler (not
        recovered yet) holding the rows as stored; the kernel as it was left."""
        self.store.close()
        self.world.store = Store(self.world.settings.database_path, self.world.clock)
        self.engine = self.world.reconciler(POLICY)
        self.engine.records.update((r.name, r) for r in self.store.devices(include_removed=True))

    def context(self) -> PassContext:
        """A pass's context over what the kernel shows now (recovered, as a pass is)."""
        engine = self.engine
        pool = engine.ensure_pool()
        ctx = PassContext(settings=engine.settings, host=engine.host, store=engine.store,
                          clock=engine.clock, policy=engine.policy, pool=pool,
                          ledger=engine.ledger, records=engine.records)
        ctx.obs = observe(pool.client, engine.settings.pool_name)
        if engine.recovered:
            recovery.sync_transaction_id(ctx)
        else:
            recovery.recover(ctx)
            engine.recovered = True
        return ctx


def new_stage(tmp_path: Path) -> Stage:
    """A fresh stage: the pool made by a first (empty) pass."""
    world = World(host=FakeKernel(), settings=make_settings(tmp_path, "rtpool"), real=False)
    engine = world.reconciler(POLICY)
    assert engine.run_pass().ok
    return Stage(world, engine)
