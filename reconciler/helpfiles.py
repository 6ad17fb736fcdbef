"""The help files installed with the package, generated from the command's own parser
(`reconciler.arguments.build_parser`): bash and zsh completions (shtab) and the man page
reconciler(1) (argparse-manpage). The one home of both libraries.

setup.py writes them at build time into the wheel's data files (DATA_FILES: where each is
installed under the prefix); `reconciler completion bash|zsh` prints a completion script from
the same function, so a checkout or a wheel installed without its data files has them too.
"""

from __future__ import annotations

from collections.abc import Callable

import shtab

from reconciler.arguments import DESCRIPTION, Shell, build_parser


def completion(shell: Shell) -> str:
    """The completion script of `reconciler` for `shell`."""
    script = str(shtab.complete(build_parser(), shell=shell))
    # shtab ends without a newline: printed, the shell's prompt would follow on its last line.
    return script if script.endswith("\n") else script + "\n"


def manpage() -> str:
    """reconciler(1) in roff."""
    # Imported here: the man page is made at build time (and by tests), never by the command.
    from argparse_manpage.manpage import Manpage

    page = Manpage(build_parser())
    # The attributes its documentation says to set (its `_data` argument is private); the
    # date is $SOURCE_DATE_EPOCH's when set, for reproducible builds.
    page.description = DESCRIPTION.rstrip(".").lower()
    page.manual = "System Administration"
    return str(page)


# Each file's path under the installation prefix (the wheel's data), and what it holds. The
# directories are where bash-completion, zsh and man look under /usr and /usr/local.
DATA_FILES: dict[str, Callable[[], str]] = {
    "share/bash-completion/completions/reconciler": lambda: completion(Shell.BASH),
    "share/zsh/site-functions/_reconciler": lambda: completion(Shell.ZSH),
    "share/man/man1/reconciler.1": manpage,
}
