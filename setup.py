"""Build hook: the shell completions and the man page, generated from the command's parser
(reconciler.helpfiles) and installed as the wheel's data files. The gRPC stubs of containerd's
snapshots API are committed, not generated here (scripts/gen-stubs makes them with the oldest
grpcio-tools we support; docs/architecture.md says why). Everything else about the package is
in pyproject.toml."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

from setuptools import Command, setup
from setuptools.command.build import build

ROOT = Path(__file__).resolve().parent
# Where build_helpfiles writes; setuptools leaves build/ out of the sdist.
HELPFILES = Path("build") / "helpfiles"


def generate_help_files(target: Path) -> list[Path]:
    """Write the completions and the man page under `target`, each at its path under the
    installation prefix (share/...); returns the files written, relative to `target`."""
    # Our own module, from this source tree: it needs the standard library, shtab and
    # argparse-manpage (build requirements), none of the package's runtime dependencies.
    sys.path.insert(0, str(ROOT))
    try:
        from reconciler.helpfiles import DATA_FILES
    finally:
        sys.path.remove(str(ROOT))
    written = []
    for relative, generate in DATA_FILES.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(generate())
        written.append(Path(relative))
    return written


class BuildHelpFiles(Command):
    """Generate the completions and the man page, and have them installed as data files."""

    description = "generate the shell completions and the man page from the parser"
    user_options: ClassVar[list[tuple[str, str | None, str]]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        written = generate_help_files(ROOT / HELPFILES)
        data_files = self.distribution.data_files = self.distribution.data_files or []
        for relative in written:
            entry = (str(relative.parent), [str(HELPFILES / relative)])
            if entry not in data_files:
                data_files.append(entry)


# A build generates the help files before anything is installed (install_data reads the
# distribution's data files when it runs, after the build).
build.sub_commands.append(("build_helpfiles", None))

setup(cmdclass={"build_helpfiles": BuildHelpFiles})
