"""The help files installed with the package, generated from the command's own parser
(`reconciler.arguments.build_parser`): bash and zsh completions (shtab) and the man page
reconciler(8) (argparse-manpage). The one home of both libraries.

setup.py writes them at build time into the wheel's data files (DATA_FILES: where each is
installed under the prefix); `reconciler completion bash|zsh` prints a completion script from
the same function, so a checkout or a wheel installed without its data files has them too.

The man page is section 8's (a daemon and its administration commands, "System
Administration"), with what the parser cannot say: EXIT STATUS, ENVIRONMENT, FILES, SIGNALS
and SEE ALSO. Its names (variables, paths, exit codes) are copies, since this module is loaded
at build time without the runtime dependencies; tests/unit/test_helpfiles.py keeps each equal
to its original. It is the same bytes for the same source: dated by $SOURCE_DATE_EPOCH when
set (reproducible builds), else not dated at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import shtab

from reconciler.arguments import DESCRIPTION, Shell, build_parser


def completion(shell: Shell) -> str:
    """The completion script of `reconciler` for `shell`."""
    script = str(shtab.complete(build_parser(), shell=shell))
    # shtab ends without a newline: printed, the shell's prompt would follow on its last line.
    return script if script.endswith("\n") else script + "\n"


MAN_SECTION = 8


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped (a bare "-" may be set as a
    hyphen, which man's search and copy-paste do not take for the ASCII minus)."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def _tagged(items: list[tuple[str, str]]) -> str:
    """A list of tagged paragraphs: each term in bold, its text below it."""
    return "\n".join(f".TP\n.B {_roff(term)}\n{_roff(text)}" for term, text in items)


EXIT_STATUS = [
    ("0", "Everything converged, or the command did what it was asked."),
    ("1", "A device is Faulty, waiting or not converged; a spec is invalid; the pool could "
          "not be brought up; the database stayed busy; a request was refused; another "
          "daemon holds root_path."),
    ("2", "A usage or config error (the config, $RECONCILER_LOG_LEVEL or $NODE_NAME), said "
          "in one line. status --check is the exception: 0 healthy, 1 degraded, 2 down."),
]
ENVIRONMENT = [
    ("RECONCILER_CONFIG", "The config file when -c is not given (default "
                          "/etc/reconciler/config.toml)."),
    ("RECONCILER_LOG_LEVEL", "The least level of the log lines (debug, info, warning or "
                             "error), over the config's log_level; --log-level comes first."),
    ("NODE_NAME", "The default of the config's node_name, which specs' nodes globs select by "
                  "(a Kubernetes DaemonSet sets it from spec.nodeName)."),
    ("NOTIFY_SOCKET", "Where run tells its service manager READY, STATUS, RELOADING, STOPPING "
                      "and WATCHDOG (sd_notify)."),
    ("WATCHDOG_USEC", "How often run pings the service manager's watchdog (with "
                      "WATCHDOG_PID, when set, naming the daemon)."),
    ("JOURNAL_STREAM", "When it names stderr, each log line starts with the journal's "
                       "priority of its level."),
]
FILES = [
    ("/etc/reconciler/config.toml", "The config (TOML; every key is optional)."),
    ("/var/lib/reconciler", "root_path, the state directory (0700), holding what follows."),
    ("reconciler.db", "The SQLite database (with its -wal and -shm), 0600: every "
                      "transition of every device."),
    ("reconciler.lock", "One daemon per root_path: its flock, and the daemon's pid."),
    ("control.sock", "The running daemon's control socket (retry, gc, adopt, "
                     "confirm-removals, resync)."),
    ("specs/", "The spec files, one NAME.toml per device, unless the config's spec_dir "
               "says otherwise."),
    ("loopback/data, loopback/metadata", "The sparse files of a loopback pool (no "
                                         "data_device)."),
]
SIGNALS = [
    ("SIGTERM, SIGINT", "run finishes the step in flight and exits 0; status --watch "
                        "exits 0 at once."),
    ("SIGHUP", "run reads the config again (a config that does not load is refused and the "
               "old one kept)."),
    ("SIGUSR1", "run makes a full pass now."),
    ("SIGQUIT", "Every command writes its threads' stacks to stderr, then quits."),
]
SEE_ALSO = ["dmsetup(8)", "lvmthin(7)", "thin_check(8)", "thin_ls(8)", "mkfs.ext4(8)",
            "mkfs.xfs(8)", "xfs_growfs(8)", "containerd(8)", "systemd.service(5)",
            "sd_notify(3)", "journalctl(1)"]


def _date(environ: Mapping[str, str]) -> str:
    """The page's date: $SOURCE_DATE_EPOCH's day (UTC) when set, else none, so that the
    same source makes the same page."""
    epoch = environ.get("SOURCE_DATE_EPOCH", "")
    if not epoch:
        return ""
    if not epoch.isascii() or not epoch.isdigit():
        raise ValueError(f"SOURCE_DATE_EPOCH must be a whole number of seconds, got {epoch!r}")
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%d")


def manpage(environ: Mapping[str, str] | None = None) -> str:
    """reconciler(8) in roff; `environ`: os.environ unless given (SOURCE_DATE_EPOCH)."""
    # Imported here: the man page is made at build time (and by tests), never by the command.
    from argparse_manpage.manpage import Manpage

    page = Manpage(build_parser())
    # The attributes its documentation says to set (its `_data` argument is private).
    page.description = DESCRIPTION.rstrip(".").lower()
    page.manual = "System Administration"
    page.section = MAN_SECTION
    page.date = _date(os.environ if environ is None else environ)
    for heading, content in (("EXIT STATUS", _tagged(EXIT_STATUS)),
                             ("ENVIRONMENT", _tagged(ENVIRONMENT)),
                             ("FILES", _tagged(FILES)), ("SIGNALS", _tagged(SIGNALS)),
                             ("SEE ALSO", ",\n".join(f".BR {name.replace('(', ' (')}"
                                                      for name in SEE_ALSO))):
        page.add_section(heading, "=", content)
    return str(page)


# Each file's path under the installation prefix (the wheel's data), and what it holds. The
# directories are where bash-completion, zsh and man look under /usr and /usr/local.
DATA_FILES: dict[str, Callable[[], str]] = {
    "share/bash-completion/completions/reconciler": lambda: completion(Shell.BASH),
    "share/zsh/site-functions/_reconciler": lambda: completion(Shell.ZSH),
    f"share/man/man{MAN_SECTION}/reconciler.{MAN_SECTION}": manpage,
}
