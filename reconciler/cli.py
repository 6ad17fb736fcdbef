"""The `reconciler` command: `run --once` and `status`, on top of every other layer.

Exit codes: 0 everything converged, 1 a device is Faulty or not converged or a spec is invalid
(or the pool could not be brought up), 2 a config or usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from reconciler import logs
from reconciler.config import DEFAULT_CONFIG_PATH, ConfigError, Settings, config_path, load_settings
from reconciler.dm.errors import DmError
from reconciler.dm.host import Host, SystemHost
from reconciler.reconcile.engine import PassResult, Reconciler
from reconciler.status import build_report, render_json, render_table
from reconciler.store import Store

EXIT_OK, EXIT_NOT_CONVERGED, EXIT_USAGE = 0, 1, 2
log = structlog.get_logger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler", description="Keep device-mapper thin devices equal to spec files."
    )
    parser.add_argument(
        "-c", "--config", type=Path,
        help=f"config file (default: $RECONCILER_CONFIG, else {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument("--log-level", choices=logs.LEVELS, default="info")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="reconcile the kernel with the spec directory")
    run.add_argument("--once", action="store_true", required=True,
                     help="one pass, then exit with 0 when everything converged")
    status = sub.add_parser("status", help="show devices, their state, usage and errors")
    status.add_argument("name", nargs="?", help="one device, with its history")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--all", action="store_true", help="include Removed devices")
    return parser


def _settings(explicit: Path | None) -> Settings:
    path = config_path(explicit)
    if explicit is None and path == DEFAULT_CONFIG_PATH and not path.exists():
        # No config anywhere: the documented defaults (a loopback pool under root_path).
        return Settings()
    return load_settings(path)


def _summarise(result: PassResult) -> None:
    log.info("pass.finished", converged=len(result.converged), removed=len(result.removed),
             pending=result.pending or None, faulty=result.faulty or None,
             rejected=[r.name for r in result.rejected] or None, ok=result.ok)


def run_once(settings: Settings, host: Host) -> int:
    """One reconcile pass; the exit code says whether everything converged."""
    store = Store(settings.database_path, time.time)
    try:
        result = Reconciler(settings, host, store).run_pass()
    except DmError as exc:
        log.error("pass.failed", error=str(exc), errno=exc.errno_name,
                  next="fix the cause and run again")
        return EXIT_NOT_CONVERGED
    finally:
        store.close()
    _summarise(result)
    return EXIT_OK if result.ok else EXIT_NOT_CONVERGED


def show_status(settings: Settings, host: Host, name: str | None, as_json: bool,
                include_removed: bool) -> int:
    """Print the status document; exit 1 when the named device is unknown."""
    if not settings.database_path.exists():
        print(f"no state at {settings.database_path}: the daemon has not run yet",
              file=sys.stderr)
        return EXIT_NOT_CONVERGED
    store = Store(settings.database_path, time.time)
    try:
        report = build_report(settings, store, host, name, include_removed)
    finally:
        store.close()
    if name is not None and not report["devices"] and not report["rejected_specs"]:
        print(f"no device named {name!r}", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    sys.stdout.write(render_json(report) if as_json else render_table(report))
    return EXIT_OK


def main(argv: Sequence[str] | None = None, host: Host | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    logs.configure(args.log_level)
    try:
        settings = _settings(args.config)
    except ConfigError as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host = host or SystemHost()
    if args.command == "run":
        return run_once(settings, host)
    return show_status(settings, host, args.name, args.json, args.all)


if __name__ == "__main__":
    sys.exit(main())
