"""What the simulation does next: one step, drawn from a seeded `random.Random`.

A step is plain data (`Step`: a kind and its arguments), so a schedule can be drawn at random,
written by hand (the pinned findings), printed short in a failure and replayed. What is drawn
depends on what the simulated world holds now (`Scene`), so one seed always makes the same
schedule against the same daemon.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

NAMES = tuple(f"d{i}" for i in range(8))
NODES = ("n1", "n2")
SPEC_DIRS = ("a", "b")
MAX_REMOVALS = ("1", "2", "3", "8", "unlimited")
# Spec texts the daemon must refuse (each a different reason).
INVALID = ('size = "bogus"\n', 'filesystem = "zfs"\n', "[[[\n", "size = -1\n",
           'parent = "nowhere"\nsize = "4MiB"\n')
FAULT_OPS = ("create", "reload", "suspend", "resume", "remove", "message", "status", "info",
             "table", "names")
ERRNOS = (errno.EBUSY, errno.EIO, errno.ENOMEM, errno.ENOSPC, errno.EINVAL)


@dataclass(frozen=True)
class Step:
    """One thing done to the daemon's world: a kind and its arguments."""

    kind: str
    args: tuple[str | int, ...] = ()

    def __str__(self) -> str:
        shown = [a if not isinstance(a, str) or len(a) <= 24 else a[:21] + "..."
                 for a in self.args]
        return f"{self.kind}({', '.join(repr(a) for a in shown)})"


class Scene(Protocol):
    """What the step drawn next may depend on."""

    def spec_files(self) -> list[str]:
        """Names with a spec file in the current spec_dir, sorted."""
        ...

    def device_names(self) -> list[str]:
        """Names of the live managed devices, sorted."""
        ...

    def snapshot_keys(self, kind: str) -> list[str]:
        """Live snapshot keys of a kind ("active", "committed", "view"), sorted."""
        ...

    def held(self) -> list[str]:
        """Names reported held now, sorted."""
        ...


def spec_text(rng: random.Random, name: str) -> str:
    """A valid spec for `name`: raw or ext4, some sized, some pinned to nodes, some inactive,
    some snapshots of another name."""
    lines = []
    if rng.random() < 0.2:
        lines.append(f'parent = "{rng.choice([n for n in NAMES if n != name])}"')
    else:
        lines.append('filesystem = "none"' if rng.random() < 0.8 else 'filesystem = "ext4"')
        lines.append(f'size = "{rng.choice((4, 8, 16))}MiB"')
    if rng.random() < 0.3:
        lines.append(f'nodes = ["{rng.choice((*NODES, "n*"))}"]')
    if rng.random() < 0.1:
        lines.append("active = false")
    return "\n".join(lines) + "\n"


def _spec(rng: random.Random, scene: Scene) -> Step:
    name = rng.choice(NAMES)
    if rng.random() < 0.15:
        return Step("spec", (name, rng.choice(INVALID)))
    return Step("spec", (name, spec_text(rng, name)))


def _delete(rng: random.Random, scene: Scene) -> Step:
    files = scene.spec_files()
    if not files:
        return _spec(rng, scene)
    if len(files) > 1 and rng.random() < 0.15:  # a `rm` of several at once
        return Step("delete", tuple(rng.sample(files, rng.randint(2, len(files)))))
    return Step("delete", (rng.choice(files),))


def _rename(rng: random.Random, scene: Scene) -> Step:
    files = scene.spec_files()
    if not files:
        return _spec(rng, scene)
    return Step("rename", (rng.choice(files), rng.choice(NAMES)))


def _special(rng: random.Random, scene: Scene) -> Step:
    kind = rng.choice(("fifo", "symlink", "directory", "badname"))
    return Step("special", (kind, rng.choice(NAMES)))


def _reload(rng: random.Random, scene: Scene) -> Step:
    key = rng.choice(("spec_dir", "node_name", "max_removals", "max_removals",
                      "async_remove"))
    choices = {"spec_dir": SPEC_DIRS, "node_name": NODES, "max_removals": MAX_REMOVALS,
               "async_remove": ("true", "false")}
    return Step("reload", (key, rng.choice(choices[key])))


def _restart(rng: random.Random, scene: Scene) -> Step:
    return Step("restart", (int(rng.random() < 0.3),))


def _snapshot(rng: random.Random, scene: Scene) -> Step:
    active, committed = scene.snapshot_keys("active"), scene.snapshot_keys("committed")
    views = scene.snapshot_keys("view")
    key = f"k{rng.randrange(1000)}"
    parent = rng.choice(committed) if committed and rng.random() < 0.6 else ""
    choices = [Step("prepare", (key, parent)), Step("view", (key, parent)), Step("cleanup")]
    if active:
        choices.append(Step("commit", (f"c{rng.randrange(1000)}", rng.choice(active))))
    everything = active + committed + views
    if everything:
        choices.append(Step("remove", (rng.choice(everything),)))
        choices.append(Step("mounts", (rng.choice(everything),)))
    return rng.choice(choices)


def _operator(rng: random.Random, scene: Scene) -> Step:
    held = scene.held()
    if held and rng.random() < 0.5:
        names = held if rng.random() < 0.6 else rng.sample(held, rng.randint(1, len(held)))
        return Step("confirm", tuple(names))
    devices = scene.device_names() or list(NAMES)
    return rng.choice([Step("retry", (rng.choice(devices),)), Step("gc-orphans"),
                       Step("gc-faulty"), Step("adopt", (rng.choice(NAMES), rng.randrange(8))),
                       Step("resync")])


def _fault(rng: random.Random, scene: Scene) -> Step:
    return Step("fault", (rng.choice(FAULT_OPS), rng.choice(ERRNOS), rng.randint(1, 3)))


def _crash(rng: random.Random, scene: Scene) -> Step:
    where = rng.choice(("kernel", "kernel", "store"))
    return Step("crash", (where, rng.choice(("before", "after")), rng.randint(1, 25)))


def _write(rng: random.Random, scene: Scene) -> Step:
    devices = scene.device_names()
    if not devices:
        return _spec(rng, scene)
    return Step("write", (rng.choice(devices), rng.randrange(1024), rng.randrange(1 << 30)))


def _wait(rng: random.Random, scene: Scene) -> Step:
    return Step("wait", (rng.choice((1, 10, 60, 300, 900)),))


# Each kind of step and its weight in a random schedule.
DRAWS: tuple[tuple[Callable[[random.Random, Scene], Step], int], ...] = (
    (_spec, 26), (_delete, 14), (_rename, 4), (_special, 3), (_reload, 6), (_restart, 3),
    (_snapshot, 12), (_operator, 8), (_fault, 6), (_crash, 6), (_write, 6), (_wait, 6),
)


def next_step(rng: random.Random, scene: Scene) -> Step:
    """The next step of a random schedule."""
    draw = rng.choices([d for d, _ in DRAWS], weights=[w for _, w in DRAWS])[0]
    return draw(rng, scene)
