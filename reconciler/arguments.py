"""The `reconciler` command's arguments: its parser and nothing else.

It imports only the standard library (and nothing of ours), so that a build step can load it
without the runtime dependencies, to generate the shell completions and the man page from the
same parser the command uses (setup.py). `reconciler.cli` parses with it and does the work.
The constants it shares with other modules are copies (a module of ours would bring its
third-party imports); tests/unit/test_arguments.py keeps each equal to its original.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path

PROG = "reconciler"
DESCRIPTION = "Keep device-mapper thin devices equal to spec files."
# reconciler.config.DEFAULT_CONFIG_PATH and reconciler.logs.LEVELS.
DEFAULT_CONFIG_PATH = Path("/etc/reconciler/config.toml")
LOG_LEVELS = ("debug", "info", "warning", "error")
# reconciler.containerd_config.Layout's and CgroupDriver's values.
CONTAINERD_LAYOUTS = ("1.6", "1.7", "2.x")
CGROUP_DRIVERS = ("cgroupfs", "systemd")


class Shell(StrEnum):
    """The shells `reconciler completion` writes a script for."""

    BASH = "bash"
    ZSH = "zsh"


def _global_options(parser: argparse.ArgumentParser, default: bool) -> None:
    """-c/--config and --log-level. The top-level parser holds their defaults; each command's
    copy defaults to SUPPRESS, so that it sets them only when given after the command (and
    then wins: argparse copies a command's namespace over the top-level one)."""
    parser.add_argument(
        "-c", "--config", type=Path, default=None if default else argparse.SUPPRESS,
        help=f"config file (default: $RECONCILER_CONFIG, else {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS,
                        default=None if default else argparse.SUPPRESS,
                        help="least level of the log lines on stderr (default: "
                        "$RECONCILER_LOG_LEVEL, else the config's log_level, else info)")


def package_version() -> str:
    """The installed package's version (its metadata: one source, pyproject.toml)."""
    # Imported when asked: importlib.metadata would be in every command's start-up.
    from importlib import metadata

    try:
        return metadata.version("reconciler")
    except metadata.PackageNotFoundError:  # a checkout run without installing it
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """`--version`: the version is looked up when asked for, not when the parser is built
    (the build makes the man page from the parser before the package is installed)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[object] | None, option_string: str | None = None) -> None:
        # On stdout, as argparse's own version action prints.
        sys.stdout.write(f"{parser.prog} {package_version()}\n")
        parser.exit()


# Adds one subcommand (its name, its one-line summary) and gives back its parser.
Command = Callable[[str, str], argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    """The parser of `reconciler` and all its subcommands."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    _global_options(parser, default=True)
    parser.add_argument("--version", action=_VersionAction,
                        help="print the installed version and exit")
    # Every command's parser takes the global options too: `reconciler status -c X`.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, default=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, parents=[common],
                              description=summary[0].upper() + summary[1:] + ".")

    _observing_commands(command)
    _acting_commands(command, common)
    return parser


def _observing_commands(command: Command) -> None:
    """The daemon (run) and the commands that show what it has done and would do (status,
    plan)."""
    run = command("run", "keep the kernel equal to the spec directory")
    run.add_argument("--once", action="store_true",
                     help="pass until settled, then exit 0 when everything converged")
    run.add_argument("--allow-removals", action="store_true",
                     help="with --once: remove every device whose spec file is gone, "
                     "however many (the removal guard is off)")
    status = command("status", "show devices, their state, usage and errors")
    status.add_argument("name", nargs="?", help="one device, with its history")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--all", action="store_true", help="include Removed devices")
    status.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                        help="look every SECONDS (default 2), and at once when the store "
                        "changes; write the document again when it changed (with --json: "
                        "one JSON document per line)")
    status.add_argument("-o", "--output", metavar="COLUMNS",
                        help="the table's columns, comma-separated (name,kind,state,since,"
                        "thin_id,size,used,parent,key,error)")
    status.add_argument("--no-headers", action="store_true",
                        help="only the device rows: no header, pool line or other sections")
    status.add_argument("--check", action="store_true",
                        help="one line for probes; exit 0 ready, 1 degraded, 2 down, 3 starting")
    plan = command("plan", "print what the next pass would do, doing nothing")
    plan.add_argument("--json", action="store_true", help="one JSON document")


def _acting_commands(command: Command, common: argparse.ArgumentParser) -> None:
    """The operator's commands (retry, gc, confirm-removals, adopt, resync) and the tools'
    (config, containerd-config, completion), in the order `reconciler --help` lists them."""
    retry = command("retry", "try a Faulty device again (releases nothing)")
    retry.add_argument("name")
    gc = command("gc", "delete what the operator says may go")
    gc.add_argument("--orphans", action="store_true",
                    help="delete thin ids the pool has and the store does not manage")
    gc.add_argument("--faulty", action="store_true",
                    help="remove every Faulty device (dm device and thin id)")
    confirm = command("confirm-removals",
                      "let removals the guard holds be done (run with the daemon's config)")
    confirm.add_argument("names", nargs="*", metavar="NAME",
                         help="a held removal to confirm (`status` lists them)")
    confirm.add_argument("--all", action="store_true", dest="all_held",
                         help="confirm every removal held now")
    adopt = command("adopt", "manage an orphan thin id as device NAME")
    adopt.add_argument("name")
    adopt.add_argument("--thin-id", type=int, dest="thin_id", metavar="THIN_ID",
                       help="the orphan's thin id (required)")
    # The spelling before the thin id had one name: kept for scripts, hidden, deprecated.
    adopt.add_argument("--id", type=int, dest="thin_id", help=argparse.SUPPRESS)
    command("resync", "a full pass now (by the running daemon, else here)")
    config = command("config", "check the config file, or print the defaults")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_sub.add_parser(
        "check", parents=[common],
        help="validate the config the daemon would read and print it whole as TOML "
        "(exit 2 on an error)")
    config_sub.add_parser("default", parents=[common],
                          help="print the default config as TOML")
    containerd = command("containerd-config",
                         "print the containerd drop-in that makes the daemon its snapshotter")
    containerd.add_argument("--containerd-version", choices=CONTAINERD_LAYOUTS,
                            help="the containerd to write it for (default: the version of "
                            "the containerd on PATH)")
    containerd.add_argument("--handler-only", action="store_true",
                            help="only the runtime handler `reconciler` uses it; CRI's default "
                            "snapshotter stays (a daemon run as a pod; containerd 1.7 or newer)")
    containerd.add_argument("--cgroup-driver", choices=CGROUP_DRIVERS, default="cgroupfs",
                            help="kubelet's cgroupDriver, which runc must use too: systemd "
                            "(kubeadm's default) sets SystemdCgroup on the runc handlers the "
                            "drop-in declares (default: cgroupfs, runc's own)")
    completion = command("completion", "print the shell completion script")
    # Plain values (cli.py makes the Shell): with type=Shell a typo would read "invalid Shell
    # value" instead of argparse's list of the choices.
    completion.add_argument("shell", choices=[shell.value for shell in Shell],
                            help="bash (source it, or install it in bash-completion's "
                            "completions directory) or zsh (as _reconciler in $fpath)")
