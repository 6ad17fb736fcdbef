"""The `reconciler` command, on top of every other layer.

`run` (the daemon; `--once` for one settled pass), `status`, `plan`, `retry`, `gc`, `adopt`,
`confirm-removals`, `resync`. The last five are served by the running daemon over its control
socket (answered with what was done and the devices' states after the pass that did it), or,
when no daemon holds the root lock, by this process.
`config check` prints the config as `run` reads it, `config default` the defaults,
`containerd-config` containerd's drop-in, and `completion bash|zsh` the completion script.
The arguments are `reconciler.arguments`'.
Exit codes: 0 everything converged (or done), 1 a device is Faulty, waiting or not converged,
a spec is invalid, the pool could not be brought up, or the database stayed busy (other
processes: the daemon and any number of CLI calls share it); 2 a config or usage error.
`status --check` is the exception, for probes: 0 ready, 1 degraded, 2 down, 3 starting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from reconciler import logs
from reconciler.arguments import Shell, build_parser
from reconciler.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_LOG_LEVEL,
    ConfigError,
    Settings,
    config_path,
    effective_log_level,
    load_settings,
    settings_from_mapping,
    settings_toml,
)
from reconciler.daemon.lock import LockError, RootLock, holder_pid, lock_held
from reconciler.daemon.once import run_until_settled
from reconciler.dm.crash import from_environment
from reconciler.dm.host import Host, SystemHost
from reconciler.failures import ClassifiedError
from reconciler.reconcile.holds import Selection, refusal, unconfirmed
from reconciler.reconcile.maintenance import confirm_request
from reconciler.reconcile.reconciler import Reconciler
from reconciler.store import RequestKind, Store, StoreError
from reconciler.vocabulary import DeviceState

# `status`, the control socket's client and containerd's drop-in are imported by the commands
# that use them: `run --once`, which the crash matrix and every kernel test start again and
# again, does not load them (a dozen modules; under the kernel tier's emulation their import,
# dataclasses built by exec(), is seconds a process).
if TYPE_CHECKING:
    from reconciler.daemon.control import ControlRequest

EXIT_OK, EXIT_NOT_CONVERGED, EXIT_USAGE = 0, 1, 2
log = structlog.get_logger(__name__)


def _settings(explicit: Path | None) -> tuple[Settings, Path | None]:
    path = config_path(explicit)
    if explicit is None and path == DEFAULT_CONFIG_PATH and not path.exists():
        # No config anywhere: the documented defaults (a loopback pool under root_path),
        # checked as a file's would be ($NODE_NAME, root_path's owner and mode).
        return settings_from_mapping({}), None
    return load_settings(path), path


def _locked(settings: Settings, action: Callable[[], int]) -> int:
    lock = RootLock(settings.root_path)
    try:
        lock.acquire()
    except LockError as exc:  # another daemon holds it, or a link is planted there
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    try:
        return action()
    finally:
        lock.release()


def run_once(settings: Settings, host: Host, allow_removals: bool = False) -> int:
    """Passes until settled; the exit code says whether everything converged."""
    store = Store(settings.database_path, time.time)
    try:
        engine = Reconciler(settings, host, store, allow_removals=allow_removals)
        result = run_until_settled(engine, time.time, time.sleep)
    except ClassifiedError as exc:
        log.error("pass.failed", error=str(exc), errno=exc.errno_name,
                  next="fix the cause and run again")
        return EXIT_NOT_CONVERGED
    except Exception as exc:  # reported with its traceback: never a crash
        log.exception("pass.failed", error=f"{type(exc).__name__}: {exc}",
                      next="a bug: report it with this traceback")
        print(f"reconciler: the pass failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    finally:
        store.close()
    log.info("run.finished", converged=len(result.converged), removed=len(result.removed),
             pending=result.pending or None, faulty=result.faulty or None,
             rejected=[r.name for r in result.rejected] or None,
             held=result.held or None, source_error=result.source_error, ok=result.ok)
    if result.source_error is not None:
        print(f"reconciler: {result.source_error}", file=sys.stderr)
    if result.held:
        print(f"reconciler: {len(result.held)} removals held ({', '.join(result.held)}): "
              "confirm with `reconciler confirm-removals` or `run --once --allow-removals`",
              file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_NOT_CONVERGED


def confirm_removals(settings: Settings, host: Host, names: Sequence[str],
                     all_held: bool) -> int:
    """Let the held removals named (or --all: every one held now) be done, when they were
    held under the config this command runs with (the daemon's)."""
    if not settings.database_path.exists():
        print("reconciler: nothing held (no state yet)", file=sys.stderr)
        return EXIT_OK
    store = Store(settings.database_path, time.time)
    try:
        waiting = unconfirmed(store.held_removals())
    finally:
        store.close()
    if not waiting:
        print("nothing held")
        return EXIT_OK
    if not names and not all_held:
        for name, hold in sorted(waiting.items()):
            print(f"  {name}  held: {hold.reason}")
        print(f"reconciler: {len(waiting)} removals held: name those to confirm, or --all",
              file=sys.stderr)
        return EXIT_USAGE
    chosen = sorted(waiting) if all_held else sorted(set(names))
    selection = Selection.of(settings)
    refusals = [why for n in chosen
                if (why := refusal(n, waiting.get(n), selection, selection)) is not None]
    if refusals:
        for why in refusals:
            print(f"reconciler: {why}; nothing confirmed", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    print(f"confirming {len(chosen)} removals: {', '.join(chosen)}")
    return hand_over(settings, host, RequestKind.CONFIRM_REMOVALS,
                     confirm_request(chosen, selection), names=chosen,
                     selection=selection.text)


def run_daemon(settings: Settings, host: Host, path: Path | None,
               log_level_flag: str | None = None) -> int:
    """The long-running daemon; a reload takes a new log_level unless --log-level or
    $RECONCILER_LOG_LEVEL sets it (`log_level_flag`: --log-level's)."""
    # Imported here: the daemon brings watchdog, which the commands that only read, `status
    # --check` run by probes every few seconds above all, never use (prometheus_client it
    # loads only to serve metrics_address, grpc and protobuf only to serve grpc_socket).
    from reconciler.daemon.descriptors import raise_descriptor_limit
    from reconciler.daemon.health import MetricsUnavailable
    from reconciler.daemon.service import Daemon
    from reconciler.sockets import SocketUnavailable

    raise_descriptor_limit()  # each listener bounds its share; the loop gets the rest
    daemon = Daemon(settings, host, config_path=path, reconfigure_logs=lambda fresh: (
        logs.configure(effective_log_level(log_level_flag, fresh))))
    daemon.install_signal_handlers()
    try:
        return daemon.serve()
    except (SocketUnavailable, MetricsUnavailable) as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_NOT_CONVERGED


def check_status(settings: Settings, host: Host, as_json: bool) -> int:
    """`status --check`: the verdict in one line (or JSON); its exit code is the health."""
    from reconciler.status import checked, render_check

    verdict = checked(settings, host, lock_held(settings.root_path))
    sys.stdout.write(render_check(verdict, as_json))
    return verdict.health.exit_code


def _usage_error(message: str) -> int:
    print(f"reconciler: {message}", file=sys.stderr)
    return EXIT_USAGE


def show_status(settings: Settings, host: Host, args: argparse.Namespace) -> int:
    """Print the status document (again, whenever it changes, with --watch)."""
    if args.check:
        if args.name is not None or args.watch is not None:
            return _usage_error("status --check takes no NAME and no --watch")
        return check_status(settings, host, args.json)
    from reconciler.status import (
        DEFAULT_COLUMNS,
        collect,
        parse_columns,
        render_json,
        render_table,
        watch,
    )

    columns = DEFAULT_COLUMNS
    if args.output is not None or args.no_headers:
        if args.json:
            return _usage_error("status -o and --no-headers shape the table, not --json")
        try:
            columns = parse_columns(args.output) if args.output is not None else columns
        except ValueError as exc:
            return _usage_error(f"status -o: {exc}")
    if args.watch is not None and args.watch <= 0:
        return _usage_error("status --watch: SECONDS must be more than 0")
    if not settings.database_path.exists():
        print(f"no state at {settings.database_path}: the daemon has not run yet",
              file=sys.stderr)
        return EXIT_NOT_CONVERGED
    store = Store(settings.database_path, time.time)

    def render() -> str | None:
        report = collect(settings, store, host, args.name, args.all)
        if args.name is not None and not report.devices and not report.rejected_specs:
            return None
        if args.json:
            return render_json(report, one_line=args.watch is not None)
        return render_table(report, columns, headers=not args.no_headers)

    try:
        if args.watch is not None:
            # Returns only when there is nothing to show; Ctrl-C ends the process (exit 0).
            watch(render, store.written_by_others, args.watch, table=not args.json,
                  exit_code=EXIT_OK)
            text = None
        else:
            text = render()
        if text is None:
            print(f"no device named {args.name!r}", file=sys.stderr)
            return EXIT_NOT_CONVERGED
        sys.stdout.write(text)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        store.close()


# `plan --json`'s `schema_version`, as status's (reconciler.status.document.SCHEMA_VERSION).
PLAN_SCHEMA_VERSION = 1


def show_plan(settings: Settings, host: Host, as_json: bool = False) -> int:
    """Print each device's next step. Read-only by construction: the store is opened so
    that SQLite refuses any write and no file is created (none at all when there is no
    database yet), and the kernel is only asked (info, status, table)."""
    store = Store(settings.database_path, time.time, readonly=True)
    try:
        actions = Reconciler(settings, host, store).plan()
    except (ClassifiedError, OSError) as exc:
        # A plan compares with the kernel: without it (no device-mapper here, or no right
        # to it) there is nothing to say but why, in one line.
        reason = " ".join(str(exc).split())
        print(f"reconciler: cannot plan: device-mapper cannot be read here ({reason})",
              file=sys.stderr)
        return EXIT_NOT_CONVERGED
    finally:
        store.close()
    if as_json:
        document = {"schema_version": PLAN_SCHEMA_VERSION, "pool": settings.pool_name,
                    "actions": [{"name": name, "action": planned.action,
                                 "summary": planned.summary} for name, planned in actions]}
        sys.stdout.write(json.dumps(document) + "\n")
        return EXIT_OK
    width = max((len(name) for name, _ in actions), default=4)
    for name, planned in actions:
        print(f"{name.ljust(width)}  {planned.summary}")
    return EXIT_OK


def check_config(settings: Settings, path: Path | None) -> int:
    """`config check`: the config read and checked as `run` reads it (an error exits 2 in
    main, in one line), printed whole: every key, relative paths resolved."""
    if path is None:
        sys.stdout.write(f"# No config file ({DEFAULT_CONFIG_PATH} does not exist): the "
                         "defaults.\n\n")
    else:
        # One comment line whatever the path holds.
        shown = " ".join(str(path).splitlines())
        sys.stdout.write(f"# The effective config of {shown}: every key, relative paths "
                         "resolved.\n\n")
    sys.stdout.write(settings_toml(settings))
    return EXIT_OK


def print_completion(shell: Shell) -> int:
    """`completion bash|zsh`: the script setup.py installs, made from the same parser."""
    # Imported here: shtab is needed by this command only.
    from reconciler.helpfiles import completion

    sys.stdout.write(completion(shell))
    return EXIT_OK


def hand_over(settings: Settings, host: Host, kind: RequestKind, name: str,
              arg: int | None = None, names: Sequence[str] = (), selection: str = "") -> int:
    """Have the thread that owns the pool run a request: the running daemon's (over its
    control socket, which answers with the result), or, when none runs, this process's
    under the root lock (the request queued in the store and taken by it)."""
    if holder_pid(settings.root_path) is not None:
        from reconciler.daemon.control import Command, ControlRequest

        # The control command for each request a CLI process may queue itself.
        commands = {
            RequestKind.RETRY: Command.RETRY,
            RequestKind.GC_ORPHANS: Command.GC_ORPHANS,
            RequestKind.GC_FAULTY: Command.GC_FAULTY,
            RequestKind.ADOPT: Command.ADOPT,
            RequestKind.CONFIRM_REMOVALS: Command.CONFIRM_REMOVALS,
        }
        # gc's "*" and confirm-removals' JSON list are the store's row, not a device name.
        named = kind in (RequestKind.RETRY, RequestKind.ADOPT)
        request = ControlRequest(commands[kind], name if named else "", arg, tuple(names),
                                 selection)
        return ask_daemon(settings, request)
    store = Store(settings.database_path, time.time)
    try:
        store.add_request(kind, name, arg)
    finally:
        store.close()

    if kind == RequestKind.CONFIRM_REMOVALS:
        # Without a daemon this process does the removals: a pass takes the request.
        return _locked(settings, lambda: run_once(settings, host))

    def serve() -> int:
        store = Store(settings.database_path, time.time)
        try:
            Reconciler(settings, host, store).service_requests()
        except ClassifiedError as exc:
            print(f"reconciler: {exc}", file=sys.stderr)
            return EXIT_NOT_CONVERGED
        finally:
            store.close()
        print(f"{kind} done; see `reconciler status` (the logs say what was done)")
        return EXIT_OK

    return _locked(settings, serve)


def ask_daemon(settings: Settings, request: ControlRequest) -> int:
    """Send a request to the running daemon and print its answer. The daemon is never
    signalled: its pid in the lock file may be another PID namespace's (a pod's)."""
    from reconciler.daemon.control import ControlUnreachable, ask

    try:
        answer = ask(settings.control_socket, request)
    except ControlUnreachable as exc:
        pid = holder_pid(settings.root_path)
        # The pid is as the daemon's own PID namespace numbers it: shown, never signalled.
        print(f"reconciler: a daemon holds the lock of {settings.root_path} (its lock file "
              f"says pid {pid}) but its control socket does not answer: {exc}; "
              f"{request.command} not done", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    what = request.command.value + (f" {request.name}" if request.name else "")
    if answer.done:
        print(f"{what}: {answer.done}")
    if answer.error is not None:
        # The daemon's errors name their request ("adopt x: ...", "'db' is not Faulty").
        print(f"reconciler: {answer.error}", file=sys.stderr)
    width = max((len(d.name) for d in answer.devices), default=0)
    for device in answer.devices:
        line = f"  {device.name.ljust(width)}  {device.state}"
        if not device.converged:
            line += "  (not converged" + (f": {device.error})" if device.error else ")")
        print(line)
    converged = all(d.converged for d in answer.devices)
    return EXIT_OK if answer.ok and converged else EXIT_NOT_CONVERGED


def resync(settings: Settings, host: Host) -> int:
    """A full pass now: by the running daemon (answered after it), else by this process."""
    if holder_pid(settings.root_path) is not None:
        from reconciler.daemon.control import Command, ControlRequest

        return ask_daemon(settings, ControlRequest(Command.RESYNC))
    return _locked(settings, lambda: run_once(settings, host))


def request_retry(settings: Settings, host: Host, name: str) -> int:
    """Retry a Faulty device (checked here too, for a clear message)."""
    store = Store(settings.database_path, time.time)
    try:
        record = store.device(name)
    finally:
        store.close()
    if record is None or record.state is not DeviceState.FAULTY:
        state = record.state if record else "no such device"
        print(f"reconciler: {name!r} is not Faulty ({state})", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    return hand_over(settings, host, RequestKind.RETRY, name)


def main(argv: Sequence[str] | None = None, host: Host | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    logs.configure(args.log_level or DEFAULT_LOG_LEVEL)  # until the config is read
    logs.dump_stacks_on_quit()
    if args.command == "completion":
        return print_completion(Shell(args.shell))
    if args.command == "config" and args.config_command == "default":
        # The defaults whatever the config says: a broken file must not hide them.
        sys.stdout.write(settings_toml(Settings(), computed_as_comments=True))
        return EXIT_OK
    try:
        settings, path = _settings(args.config)
        # --log-level, else $RECONCILER_LOG_LEVEL (checked here), else the config's.
        logs.configure(effective_log_level(args.log_level, settings))
    except ConfigError as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host = host or from_environment(SystemHost())
    try:
        return _command(args, settings, path, host)
    except StoreError as exc:
        # The store already waited and tried again (a database that stays busy, no free id):
        # one line, never a traceback.
        print(f"reconciler: {exc}", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    except PermissionError as exc:
        # A user without rights to root_path (0700) or its files (0600): one line (issue 23).
        where = exc.filename if exc.filename is not None else settings.root_path
        print(f"reconciler: cannot open {where}: {exc.strerror}; run as root or with access "
              f"to {where}", file=sys.stderr)
        return EXIT_NOT_CONVERGED


def _command(args: argparse.Namespace, settings: Settings, path: Path | None,
             host: Host) -> int:
    """Run the command `args` names."""
    if args.command == "run":
        if args.once:
            return _locked(settings, lambda: run_once(settings, host, args.allow_removals))
        return _locked(settings, lambda: run_daemon(settings, host, path, args.log_level))
    if args.command == "plan":
        return show_plan(settings, host, args.json)
    if args.command == "retry":
        return request_retry(settings, host, args.name)
    if args.command == "gc":
        if not (args.orphans or args.faulty):
            print("reconciler: gc needs --orphans and/or --faulty", file=sys.stderr)
            return EXIT_USAGE
        code = EXIT_OK
        for flag, kind in ((args.orphans, RequestKind.GC_ORPHANS),
                           (args.faulty, RequestKind.GC_FAULTY)):
            if flag:
                code = max(code, hand_over(settings, host, kind, "*"))
        return code
    if args.command == "confirm-removals":
        return confirm_removals(settings, host, args.names, args.all_held)
    if args.command == "adopt":
        if args.thin_id is None:
            print("reconciler: adopt needs --thin-id", file=sys.stderr)
            return EXIT_USAGE
        return hand_over(settings, host, RequestKind.ADOPT, args.name, args.thin_id)
    if args.command == "resync":
        return resync(settings, host)
    if args.command == "config":
        return check_config(settings, path)
    if args.command == "containerd-config":
        from reconciler.containerd_config import print_containerd_config

        return print_containerd_config(settings, path, host, args.containerd_version,
                                       args.handler_only, args.cgroup_driver)
    return show_status(settings, host, args)


if __name__ == "__main__":
    sys.exit(main())
