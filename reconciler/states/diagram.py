"""docs/state-diagram.md, generated from the machine itself.

Run `python -m reconciler.states.diagram` after changing the machine; a test compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

from reconciler.states.machine import IN_FLIGHT, build_graph_machine

HEADER = """\
# Device state machine

Generated from `reconciler/states/machine.py` by `python -m reconciler.states.diagram`;
`tests/test_state_diagram.py` fails when this file is stale. Do not edit by hand.

States written while a kernel call is in flight (resolved by looking at the kernel after a
crash): {in_flight}.

```mermaid
"""


def render() -> str:
    """The whole Markdown document."""
    source = str(build_graph_machine().get_graph().draw(None))
    in_flight = ", ".join(sorted(IN_FLIGHT))
    return HEADER.format(in_flight=in_flight) + source.rstrip("\n") + "\n```\n"


def main() -> None:
    """Write the diagram to the path given (default docs/state-diagram.md)."""
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/state-diagram.md")
    target.write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    main()
