"""The removal guard: which removals a pass may infer from absent spec files, and which wait
for a person, durably.

A pass is level-triggered: it would take away whatever no spec names. A deleted spec file is
a request to remove; a lost mount, a wrong `spec_dir` or `node_name`, a sync tool emptying
the directory one file a second, look the same to a pass. So removals inferred from absent
files are judged: more than `max_removals` within `removal_window`, every spec-file device
at once, or any removal a config change (another `spec_dir` or `node_name`) would cause, is
held. A hold is written to the store and only two things end it: an operator's confirm
under the same config, or the spec's return. No later pass, new file, reload or restart
re-judges it. The snapshotter's removals are containerd's explicit calls: never held.

`judge` is the rule, a pure function; `RemovalGuard` keeps its memory in the store.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import structlog

from reconciler.config import Settings
from reconciler.specs import is_snapshot_device
from reconciler.states import DeviceState
from reconciler.store import DeviceRecord, HeldRemoval, HoldCause, Store

log = structlog.get_logger(__name__)
# The store's fact naming the selection the last complete pass judged under.
SELECTION_FACT = "selection"


@dataclass(frozen=True)
class Selection:
    """What the config selects devices by: the spec directory and this node's name. A pass
    under another selection than the last one infers removals nobody asked for."""

    spec_dir: str
    node_name: str

    @classmethod
    def of(cls, settings: Settings) -> Selection:
        """The selection of these settings."""
        return cls(str(settings.specs_path), settings.node_name)

    @classmethod
    def parse(cls, text: str | None) -> Selection | None:
        """A selection as stored (`text`), or None when absent or not one."""
        try:
            body = json.loads(text) if text is not None else None
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        spec_dir, node = body.get("spec_dir"), body.get("node_name")
        if not isinstance(spec_dir, str) or not isinstance(node, str):
            return None
        return cls(spec_dir, node)

    @property
    def text(self) -> str:
        """The selection as stored and sent (JSON: paths and names may hold any character)."""
        return json.dumps({"spec_dir": self.spec_dir, "node_name": self.node_name},
                          sort_keys=True)

    def __str__(self) -> str:
        return f"spec_dir {self.spec_dir}, node_name {self.node_name!r}"


@dataclass(frozen=True)
class Judgement:
    """What a pass does with its unwanted devices."""

    # Taken away this pass: the snapshotter's, the confirmed, and those let through.
    remove: frozenset[str]
    # Newly held (or held again under a new selection), and why.
    hold: frozenset[str]
    cause: HoldCause | None
    # Let through without a confirm: counted in the window.
    counted: frozenset[str]


def judge(unwanted: Collection[str], inferred: Collection[str],
          held: Mapping[str, HeldRemoval], *, counted_before: Collection[str],
          recent: Collection[str], spec_file_devices: int, limit: int | None,
          config_changed: bool) -> Judgement:
    """The removal guard's rule. Pure: table-tested.

    `unwanted` are the devices no spec names; `inferred` those of them whose removal only an
    absent spec file asks for. `held` is what the guard holds already; `counted_before` the
    inferred removals let through earlier and still under way (never judged twice);
    `recent` the names the window counts now: distinct names, so a device made and removed
    again and again under one name (a scratch device, a crash test) is one removal, while an
    accident takes many.

    A held removal stays held unless confirmed (a config change takes the confirm back:
    that config asked no more). New inferred removals are held all together when a config
    change causes them, when with the window's they would be more than `limit`, or when
    they and the other inferred ones are every spec-file device (two or more).
    """
    inferred_set = set(inferred)
    confirmed = {n for n in inferred_set & held.keys()
                 if held[n].confirmed_at is not None and not config_changed}
    waiting = (inferred_set & held.keys()) - confirmed
    fresh = inferred_set - held.keys() - set(counted_before)
    cause: HoldCause | None = None
    if config_changed and (fresh or waiting):
        cause = HoldCause.CONFIG
    elif fresh and limit is not None and len(fresh.union(recent)) > limit:
        cause = HoldCause.COUNT
    elif fresh and len(inferred_set) >= max(2, spec_file_devices):
        cause = HoldCause.EVERYTHING
    hold = (fresh | waiting) if cause is HoldCause.CONFIG else fresh if cause else set()
    kept = hold | waiting
    return Judgement(remove=frozenset(set(unwanted) - kept), hold=frozenset(hold),
                     cause=cause,
                     counted=frozenset(fresh - hold))


def hold_reason(cause: HoldCause, limit: int | None, window: float,
                selection: Selection, before: Selection | None) -> str:
    """Why removals were held, in the operator's words."""
    if cause is HoldCause.CONFIG:
        was = f" (was {before})" if before is not None else ""
        return (f"the config changed what is selected: {selection}{was}; a reload is "
                "no request to remove")
    if cause is HoldCause.COUNT:
        return (f"more than max_removals ({limit}) spec files gone within "
                f"removal_window ({window:g}s)")
    return "every device with a spec file would go: a wrong spec_dir, a lost mount, `rm *`?"


def held_message(waiting: Mapping[str, HeldRemoval]) -> str:
    """The REMOVALS_HELD condition's message: how many wait, why, and what ends a hold."""
    if not waiting:
        return ""
    reasons = sorted({h.reason for h in waiting.values()})
    return (f"{len(waiting)} removals held ({'; '.join(reasons)}): confirm with `reconciler "
            "confirm-removals NAME…` (or --all) under the daemon's config, or restore the "
            "files")


def unconfirmed(held: Mapping[str, HeldRemoval]) -> dict[str, HeldRemoval]:
    """The holds no operator confirmed yet: what waits, and what `confirm-removals` offers."""
    return {n: h for n, h in held.items() if h.confirmed_at is None}


def refusal(name: str, hold: HeldRemoval | None, asked: Selection, running: Selection
            ) -> str | None:
    """Why a confirm of `name` sent under `asked` is refused by a daemon running under
    `running` (the CLI, alone, runs under its own), or None: it is taken. The same rule for
    the CLI, which refuses before asking, and the daemon, which decides."""
    if hold is None:
        return f"{name}: not held"
    if asked != running or hold.selection != running.text:
        held_under = Selection.parse(hold.selection)
        return (f"{name}: held under another config ({held_under or '?'}) than {asked} (the "
                f"daemon runs with {running}): run confirm-removals with the daemon's config")
    return None


class RemovalGuard:
    """`judge`, with what it holds, its window and the last selection kept in the store."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self.selection = Selection.of(settings)

    def judged(self) -> Selection | None:
        """The selection the last complete pass judged removals under (None: never)."""
        return Selection.parse(self._store.fact(SELECTION_FACT))

    def removals(self, records: Mapping[str, DeviceRecord], wanted: Collection[str],
                 candidates: Iterable[str], source_error: str | None, allow_all: bool,
                 complete: bool, now: float) -> set[str]:
        """The devices a pass takes away among `candidates` (what it holds, in the store).

        Holds end here when their spec returned or their device is gone. A pass that read
        no complete spec directory infers no removal at all; `complete` (a full pass that
        read it whole) lets the selection it judged under be remembered.
        """
        held = self._store.held_removals()
        names = set(candidates) | (held.keys() if complete else set())
        # The difference first, in C: a resync's 10,000 wanted names cost no Python loop.
        unwanted = {n for n in names.difference(wanted)
                    if n in records and records[n].state != DeviceState.REMOVED}
        inferred = {n for n in unwanted if not is_snapshot_device(n)}
        if source_error is not None:
            return unwanted - inferred
        self._store.release_holds(n for n in held if n in names and n not in unwanted)
        held = {n: h for n, h in held.items() if n in unwanted}
        before = self.judged()
        if complete and before != self.selection:
            self._store.set_fact(SELECTION_FACT, self.selection.text)
        if allow_all:  # `run --once --allow-removals`: the operator said so for this run
            self._store.confirm_held(held)
            return unwanted
        verdict = self._judge(records, wanted, unwanted, inferred, held, before, now)
        if verdict.cause is not None:
            reason = hold_reason(verdict.cause, self._settings.max_removals,
                                 self._settings.removal_window, self.selection, before)
            self._store.hold_removals(verdict.hold, verdict.cause, reason, self.selection.text)
            log.warning("removals.held", count=len(verdict.hold), cause=verdict.cause.value,
                        reason=reason, names=sorted(verdict.hold)[:20],
                        next="`reconciler confirm-removals NAME…|--all`, or restore the files")
        return set(verdict.remove)

    def _judge(self, records: Mapping[str, DeviceRecord], wanted: Collection[str],
               unwanted: set[str], inferred: set[str], held: Mapping[str, HeldRemoval],
               before: Selection | None, now: float) -> Judgement:
        """`judge` on what the store remembers; the window's events kept up to date."""
        events = self._store.removal_events()
        window_start = now - self._settings.removal_window
        # A removal let through earlier is under way until its device is Removed or wanted.
        ended = {e.id for e in events if e.open and e.name not in unwanted
                 and (e.name not in records or records[e.name].state == DeviceState.REMOVED
                      or e.name in wanted)}
        counted_before = {e.name for e in events if e.open and e.id not in ended}
        # Counting every device is for when new removals are inferred, not every pass.
        new = inferred - held.keys() - counted_before
        files = sum(1 for n, r in records.items() if r.state != DeviceState.REMOVED
                    and not is_snapshot_device(n)) if new else 0
        verdict = judge(unwanted, inferred, held, counted_before=counted_before,
                        recent={e.name for e in events if e.at >= window_start},
                        spec_file_devices=files, limit=self._settings.max_removals,
                        config_changed=before is not None and before != self.selection)
        forget = [e.id for e in events if e.at < window_start
                  and (e.id in ended or not e.open)]
        self._store.note_removals(verdict.counted, ended - set(forget), forget)
        return verdict

    def waiting(self) -> dict[str, HeldRemoval]:
        """The held removals no operator confirmed yet: what `status` lists."""
        return unconfirmed(self._store.held_removals())

    def confirm(self, names: Iterable[str], selection: Selection | None
                ) -> tuple[list[str], list[str]]:
        """An operator confirms held removals: those held under `selection` (None: an older
        CLI's request, which names no config: this daemon's) and this daemon's config are
        confirmed; the rest refused, each with why. Returns (confirmed, refusals)."""
        held = self._store.held_removals()
        asked = selection if selection is not None else self.selection
        confirmed, refused = [], []
        for name in sorted(set(names)):
            why = refusal(name, held.get(name), asked, self.selection)
            if why is None:
                confirmed.append(name)
            else:
                refused.append(why)
        self._store.confirm_held(confirmed)
        return confirmed, refused
