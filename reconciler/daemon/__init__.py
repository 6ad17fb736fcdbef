"""daemon: running the reconciler over time. `once` drives passes until nothing is left to
try now; `service` is the long-running `reconciler run` (file events, periodic resync,
signals, sd_notify). Only this package imports watchdog."""
