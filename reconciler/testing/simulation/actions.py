"""What each kind of step does to the simulated world, and the passes the daemon runs after it.

A spec change is followed by the pass its file event asks for (targeted at the names, or a
full one, as the daemon's watcher and resync would); an operator command is queued in the
store as the control socket queues it, and served by a full pass; a snapshotter call runs to
its end (its own passes settle its device); faults and crashes are armed for what comes next.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from errno import ENOSPC

from reconciler.snapshots.model import SnapshotError
from reconciler.states import DeviceState
from reconciler.store import RequestKind
from reconciler.testing.fakekernel import Op
from reconciler.testing.simulation.engine import Simulation
from reconciler.testing.simulation.invariants import Content, digest
from reconciler.testing.simulation.schedule import Step

S = DeviceState
OPS = {op.value: op for op in Op}
WRITE_BYTES = 4096


def _clear(sim: Simulation, name: str) -> None:
    """Take away whatever is at a name's spec path (file, link, FIFO, directory)."""
    path = sim.settings.specs_path / f"{name}.toml"
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    elif path.is_symlink() or path.exists():
        path.unlink()


def _files_changed(sim: Simulation, names: list[str], change: Callable[[], None],
                   rng: random.Random) -> None:
    """Make a spec change, note what it asks, and run the pass its file event would."""
    before = {n: sim.present(n) or sim.has_file(n) for n in names}
    change()
    sim.spec_changed(names, before)
    sim.run_pass(names if rng.random() < 0.5 else None)


def spec(sim: Simulation, step: Step, rng: random.Random) -> None:
    """Write (or rewrite) a spec file."""
    name, text = str(step.args[0]), str(step.args[1])

    def write() -> None:
        _clear(sim, name)
        (sim.settings.specs_path / f"{name}.toml").write_text(text)
    _files_changed(sim, [name], write, rng)


def delete(sim: Simulation, step: Step, rng: random.Random) -> None:
    """Delete spec files (several: at once, as `rm` would)."""
    names = [str(a) for a in step.args]

    def unlink() -> None:
        for name in names:
            _clear(sim, name)
    _files_changed(sim, names, unlink, rng)


def rename(sim: Simulation, step: Step, rng: random.Random) -> None:
    """Rename a spec file to another name's (over whatever was there)."""
    source, target = str(step.args[0]), str(step.args[1])
    if source == target or not (sim.settings.specs_path / f"{source}.toml").is_file():
        return

    def move() -> None:
        _clear(sim, target)
        (sim.settings.specs_path / f"{source}.toml").rename(
            sim.settings.specs_path / f"{target}.toml")
    _files_changed(sim, [source, target], move, rng)


def special(sim: Simulation, step: Step, rng: random.Random) -> None:
    """Put a FIFO, a symlink, a directory, or a file whose name is not UTF-8 in spec_dir."""
    kind, name = str(step.args[0]), str(step.args[1])
    directory = sim.settings.specs_path

    def make() -> None:
        if kind == "badname":
            with open(os.fsencode(directory) + b"/" + name.encode() + b"\xff.toml", "wb") as f:
                f.write(b'filesystem = "none"\n')
            return
        _clear(sim, name)
        path = directory / f"{name}.toml"
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "symlink":
            target = sim.root / "elsewhere.toml"
            target.write_text('filesystem = "none"\nsize = "4MiB"\n')
            path.symlink_to(target)
        else:
            path.mkdir()
    _files_changed(sim, [name], make, rng)


def reload(sim: Simulation, step: Step, rng: random.Random) -> None:
    """SIGHUP with one setting changed, then the full pass a reload runs."""
    key, value = str(step.args[0]), step.args[1]
    sim.config[key] = value
    sim.reconfigure()
    sim.run_pass()


def restart(sim: Simulation, step: Step, rng: random.Random) -> None:
    """Stop and start the daemon (after a reboot, if asked), then its first pass."""
    sim.restart(reboot=bool(step.args[0]))
    sim.run_pass()


def snapshot_call(sim: Simulation, step: Step, rng: random.Random) -> None:
    """One containerd call; its refusals (NotFound, AlreadyExists...) are answers."""
    snapshotter = sim.snapshotter
    calls: dict[str, Callable[..., object]] = {
        "prepare": snapshotter.prepare, "view": snapshotter.view,
        "commit": snapshotter.commit, "remove": snapshotter.remove,
        "mounts": snapshotter.mounts, "cleanup": snapshotter.cleanup,
    }
    sim.call(f"Snapshotter.{step.kind}", calls[step.kind], *step.args,
             expected=(SnapshotError,))


def _request(sim: Simulation, kind: RequestKind, name: str = "*",
             arg: int | None = None) -> None:
    """Queue a request as the control socket does, and run the full pass that serves it."""
    sim.call("add_request", sim.store.add_request, kind, name, arg)
    sim.run_pass()


def operator(sim: Simulation, step: Step, rng: random.Random) -> None:
    """`reconciler confirm-removals/retry/gc/adopt`, or a resync."""
    if step.kind == "confirm":
        sim.confirm({str(a) for a in step.args})
        sim.run_pass()
    elif step.kind == "retry":
        _request(sim, RequestKind.RETRY, str(step.args[0]))
    elif step.kind == "gc-orphans":
        _request(sim, RequestKind.GC_ORPHANS)
    elif step.kind == "gc-faulty":
        sim.permits.faulty_gc |= {r.name for r in sim.store.devices() if r.state == S.FAULTY}
        _request(sim, RequestKind.GC_FAULTY)
    elif step.kind == "adopt":
        _request(sim, RequestKind.ADOPT, str(step.args[0]), int(step.args[1]))
    else:
        sim.run_pass()


def fault(sim: Simulation, step: Step, rng: random.Random) -> None:
    """The kernel will refuse the next few ioctls of a kind."""
    sim.kernel.faults.fail(OPS[str(step.args[0])], errno=int(step.args[1]),
                           times=int(step.args[2]))
    sim.run_pass()


def crash(sim: Simulation, step: Step, rng: random.Random) -> None:
    """The process will die at a kernel call or store write to come."""
    sim.plan.arm(str(step.args[0]), str(step.args[1]), int(step.args[2]))
    sim.run_pass()


def write(sim: Simulation, step: Step, rng: random.Random) -> None:
    """A user writes a block to a live, writable raw device, as dd would."""
    name = str(step.args[0])
    record = sim.store.device(name)
    device = sim.kernel.devices.get(f"{sim.settings.pool_name}-{name}")
    if record is None or record.device_id is None or device is None or device.suspended \
            or device.live is None or device.live.readonly or record.filesystem != "none":
        return
    blocks = max(1, record.size_bytes // WRITE_BYTES)
    offset = int(step.args[1]) % blocks * WRITE_BYTES
    data = random.Random(int(step.args[2])).randbytes(WRITE_BYTES)
    try:
        sim.kernel.write(f"/dev/mapper/{device.name}", offset, data)
    except OSError as exc:
        if exc.errno != ENOSPC:
            raise
        return
    sim.written[name] = Content(int(record.device_id), offset, WRITE_BYTES, digest(data))


def wait(sim: Simulation, step: Step, rng: random.Random) -> None:
    """Time passes; the resync runs."""
    sim.clock.now += int(step.args[0])
    sim.run_pass()


ACTIONS: dict[str, Callable[[Simulation, Step, random.Random], None]] = {
    "spec": spec, "delete": delete, "rename": rename, "special": special, "reload": reload,
    "restart": restart, "prepare": snapshot_call, "view": snapshot_call,
    "commit": snapshot_call, "remove": snapshot_call, "mounts": snapshot_call,
    "cleanup": snapshot_call,
    "confirm": operator, "retry": operator, "gc-orphans": operator, "gc-faulty": operator,
    "adopt": operator, "resync": operator, "fault": fault, "crash": crash, "write": write,
    "wait": wait,
}


def apply(sim: Simulation, step: Step, rng: random.Random) -> None:
    """Do one step and the daemon's passes after it."""
    sim.clock.now += 1
    ACTIONS[step.kind](sim, step, rng)
