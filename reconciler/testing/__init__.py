"""Test support: stand-ins for the machine that the unit tier runs the product on, and the one
harness every test shares.

Never imported by the product (an import-linter contract in pyproject.toml says so): the
product reaches these only through the seams it already has, a `Host` and the libdevmapper a
Host offers (`reconciler.dm.driver.make_client`).

- `fakekernel`: device-mapper, loop devices and tools, in memory.
- `world`: `World` (config + spec directory + store + kernel), `FakeClock`, `make_settings`.
- `config_file`: `write_config(path, **keys)`, a config.toml from keyword arguments.
- `process`: `DaemonProcess`, `reconciler run` started and stopped as a process;
  `fake_daemon` is that process over a fake kernel.

The names are imported from their modules (not re-exported here) so that a test needing only
`write_config` does not load the store and the reconciler.
"""
