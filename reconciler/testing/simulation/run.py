"""Running the simulation: one seed (or a hand-written schedule) to an `Outcome`, many seeds
to a summary, and `scripts/simulate`'s command line.

A seed is a `random.Random(seed)`: it draws every step (`schedule.next_step`) and every choice
an action makes, against a fake kernel and fake clock, so the same seed and step count replay
the same run; a failure prints the one line that replays it.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from reconciler.testing.simulation.actions import apply
from reconciler.testing.simulation.engine import Simulation, SimulationFailed
from reconciler.testing.simulation.invariants import KNOWN_OPEN, Violation, data_kept
from reconciler.testing.simulation.schedule import Step, next_step

# Steps per seed in the unit tier and by default (the convergence phase comes after them).
DEFAULT_STEPS = 24
# Steps of the schedule a failure shows (the last ones).
SHOWN_STEPS = 12


@dataclass
class Outcome:
    """How one run ended: its seed, its schedule so far, and the violation if one broke."""

    seed: int
    steps: int
    history: list[str] = field(default_factory=list)
    violation: Violation | None = None
    at_step: int = 0
    # Violations of tolerated invariants (KNOWN_OPEN) the run noted and went on after.
    tolerated: list[tuple[int, Violation]] = field(default_factory=list)
    # The schedule was written by hand (a test's), not drawn from the seed.
    given: bool = False

    @property
    def ok(self) -> bool:
        """No invariant broke."""
        return self.violation is None

    @property
    def known(self) -> set[str]:
        """The tolerated invariants it broke (known open bugs)."""
        return {v.invariant for _, v in self.tolerated}

    @property
    def replay(self) -> str:
        """The command that runs it again."""
        if self.given:
            return "its test (the schedule was written by hand)"
        # A known open bug's violation is met again only where it is not tolerated.
        strict = self.violation is not None and self.violation.invariant in KNOWN_OPEN
        return f"scripts/simulate --seed {self.seed} --steps {self.steps}" + (
            " --strict" if strict else "")

    def report(self) -> str:
        """What broke, where, the schedule so far (short), and the replay line."""
        if self.violation is None:
            return f"seed {self.seed}: ok"
        where = f"step {self.at_step}" if self.at_step <= self.steps else "convergence"
        shown = self.history[-SHOWN_STEPS:]
        skipped = len(self.history) - len(shown)
        schedule = ("... " if skipped else "") + "; ".join(shown)
        return (f"seed {self.seed} broke {self.violation.invariant} at {where}: "
                f"{self.violation.detail}\n  schedule: {schedule}\n  replay: {self.replay}")


@contextmanager
def quiet_logs() -> Iterator[None]:
    """The daemon's log events dropped (thousands per seed), the config given back after."""
    old = structlog.get_config()

    def drop(logger: Any, method: str, event: Any) -> Any:
        raise structlog.DropEvent

    structlog.configure(processors=[drop])
    try:
        yield
    finally:
        structlog.configure(**old)


def simulate(seed: int, steps: int = DEFAULT_STEPS, schedule: Sequence[Step] | None = None,
             window: float | None = None, tolerate: frozenset[str] = frozenset()) -> Outcome:
    """Run one seed's schedule (or the one given) and the convergence after it; a violation
    of a `tolerate`d invariant is noted and the run goes on."""
    rng = random.Random(seed)
    count = len(schedule) if schedule is not None else steps
    outcome = Outcome(seed, count, given=schedule is not None)
    with tempfile.TemporaryDirectory(prefix="reconciler-sim-") as tmp, quiet_logs():
        sim = Simulation(Path(tmp), window, tolerate)
        try:
            sim.run_pass()
            for number in range(1, count + 1):
                step = schedule[number - 1] if schedule is not None else next_step(rng, sim)
                sim.step_number = number
                outcome.history.append(f"{number}:{step}")
                apply(sim, step, rng)
                violation = data_kept(sim.written, sim.kernel, sim.settings)
                if violation is not None:
                    raise SimulationFailed(violation, number)
            sim.step_number = count + 1
            sim.converge(confirm=rng.random() < 0.5)
        except SimulationFailed as failed:
            outcome.violation, outcome.at_step = failed.violation, failed.step
        finally:
            outcome.tolerated = sim.tolerated
            sim.store.close()
    return outcome


def run_seeds(seeds: Sequence[int], steps: int = DEFAULT_STEPS) -> list[Outcome]:
    """Every seed's outcome, the known open bugs (KNOWN_OPEN) tolerated."""
    return [simulate(seed, steps, tolerate=KNOWN_OPEN) for seed in seeds]


def main(argv: Sequence[str] | None = None) -> int:
    """`scripts/simulate`: run seeds, print failures with their replay lines and a summary;
    exit 1 on any failure."""
    parser = argparse.ArgumentParser(prog="scripts/simulate", description=__doc__)
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds (default 1)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"steps per seed (default {DEFAULT_STEPS})")
    parser.add_argument("--seed", type=int, help="run this one seed (a replay)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the known open bugs too (KNOWN_OPEN)")
    args = parser.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else \
        list(range(args.start, args.start + args.seeds))
    tolerate = frozenset() if args.strict else KNOWN_OPEN
    started = time.monotonic()
    failures, known = [], Counter[str]()
    for seed in seeds:
        outcome = simulate(seed, args.steps, tolerate=tolerate)
        known.update(outcome.known)
        if not outcome.ok:
            failures.append(outcome)
            print(outcome.report(), flush=True)
    seconds = time.monotonic() - started
    print(f"simulated {len(seeds)} seeds x {args.steps} steps in {seconds:.1f} s "
          f"({len(seeds) / seconds:.1f} seeds/s): {len(failures)} failed"
          + (f"; known open bugs met (seeds): {dict(sorted(known.items()))}" if known else ""))
    for outcome in failures:
        print(f"  {outcome.replay}  # {outcome.violation}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
