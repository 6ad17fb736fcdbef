"""docs/state-diagram.md, generated from the machine itself.

Run `python -m reconciler.states.diagram` after changing the machine; a test compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

from reconciler.states.machine import build_graph_machine
from reconciler.vocabulary import IN_FLIGHT, LIVE, RESUMES, DeviceState

HEADER = """\
# Device state machine

Generated from `reconciler/states/machine.py` and `reconciler/vocabulary.py` by
`python -m reconciler.states.diagram`; `tests/unit/states/test_diagram.py` fails when this file is
stale. Do not edit by hand.

States written while a kernel call is in flight (after a crash or a failed attempt, the step
that started it runs again): {in_flight}.

| in-flight state | step that finishes it |
|---|---|
{resumes}

Resting states of an active device (mapped and running): {live}. A device is *ready* (usable)
when it is in one of them, not suspended in the kernel, and its filesystem is made.

```mermaid
"""


def render() -> str:
    """The whole Markdown document."""
    source = str(build_graph_machine().get_graph().draw(None))
    in_flight = ", ".join(s for s in DeviceState if s in IN_FLIGHT)
    live = ", ".join(s for s in DeviceState if s in LIVE)
    resumes = "\n".join(f"| {s} | {RESUMES[s]} |" for s in DeviceState if s in RESUMES)
    return (HEADER.format(in_flight=in_flight, live=live, resumes=resumes)
            + source.rstrip("\n") + "\n```\n")


def main() -> None:
    """Write the diagram to the path given (default docs/state-diagram.md)."""
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/state-diagram.md")
    target.write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    main()
