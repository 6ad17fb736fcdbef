"""The daemon's signals, and the config reload SIGHUP asks for.

SIGTERM/SIGINT stop the daemon (after the step in flight), SIGHUP reloads the config,
SIGUSR1 asks for a full pass now. A reload is read and checked here (`reloaded_settings`):
a config that does not load, or that changes what names the pool and its state, is refused
and the daemon goes on with the old one. The daemon (`daemon.service`) applies what passes.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType

import structlog

from reconciler.config import ConfigError, Settings, load_settings
from reconciler.daemon.wakeups import Wakeups

log = structlog.get_logger(__name__)

# Keys that name the pool and its state: changing them needs a restart, not a reload.
IDENTITY_KEYS = ("root_path", "pool_name", "data_device", "metadata_device")


def install_signal_handlers(stop: Callable[[], None], wakeups: Wakeups) -> None:
    """SIGTERM/SIGINT call `stop`, SIGHUP wakes the loop to reload, SIGUSR1 to resync."""
    def on_stop(signum: int, frame: FrameType | None) -> None:
        del frame
        log.info("daemon.signal", signal=signal.Signals(signum).name,
                 next="finishing the step in flight, then exiting")
        stop()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, lambda s, f: wakeups.reload())
    signal.signal(signal.SIGUSR1, lambda s, f: wakeups.resync())


def reloaded_settings(config_path: Path | None, current: Settings) -> Settings | None:
    """The config file's settings to go on with, or None (logged) to keep `current`: no
    file, one that does not load, or one that changes an identity key. A new metrics
    address, dm_driver or udev_timeout is not taken: the listener and the kernel client
    belong to this process until a restart."""
    if config_path is None:
        log.warning("config.reload_skipped", reason="started without a config file")
        return None
    try:
        fresh = load_settings(config_path)
    except ConfigError as exc:
        log.error("config.reload_failed", key=exc.key, error=str(exc),
                  next="keeping the old config")
        return None
    changed = [k for k in IDENTITY_KEYS if getattr(fresh, k) != getattr(current, k)]
    if changed:
        log.error("config.reload_refused", keys=changed,
                  next="restart the daemon to change these; keeping the old config")
        return None
    if fresh.metrics_address != current.metrics_address:
        # The listener (and the observers wired into the engine) belong to this process.
        log.warning("config.reload_partial", keys=["metrics_address"],
                    next="metrics stay where they are served until a restart")
        fresh = replace(fresh, metrics_address=current.metrics_address)
    client_keys = [k for k in ("dm_driver", "udev_timeout")
                   if getattr(fresh, k) != getattr(current, k)]
    if client_keys:
        # The pool's kernel client is made once (libdevmapper's state is process-wide): the
        # reconfigured engine goes on with it, as the pool carried into a new one did.
        log.warning("config.reload_partial", keys=client_keys,
                    next="the kernel client stays as it is until a restart")
        fresh = replace(fresh, dm_driver=current.dm_driver, udev_timeout=current.udev_timeout)
    return fresh
