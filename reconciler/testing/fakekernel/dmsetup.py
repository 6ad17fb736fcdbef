"""The fake dmsetup: the argv production sends, answered from the kernel model with the exact
stdout, stderr and exit code the real dmsetup gave (fixtures/dmsetup,
tests/unit/testing/test_fake_parity.py).

Only text lives here: which ioctls a command makes (`dmsetup create` is create, reload and
resume, and removes the device again when a step fails, as libdevmapper does), how dmsetup
prints devices, tables and statuses, and how it words an errno the model refuses with
("device-mapper: remove ioctl on NAME  failed: Device or resource busy").

What is approximate: a failure of the LIST ioctl, or of one device's ioctl inside a listing of
all devices, fails the whole command with that ioctl's text; the capture holds neither. (For
one device's ENXIO there, a device gone since LIST, LibdmClient instead leaves the device
out: tests/unit/testing/test_fake_drivers.py shows the difference rather than hiding it.)
" (READ-ONLY)" in `dmsetup info` is from dmsetup's source, not captured.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal, ParamSpec, TypeVar

from reconciler.testing.fakekernel.commands import Failed
from reconciler.testing.fakekernel.faults import Op
from reconciler.testing.fakekernel.model import DM_MAJOR, DmDevice, Kernel, Refused

INFO_ARGV = ("info", "-c", "--noheadings", "--nameprefixes", "-o",
             "name,uuid,major,minor,attr,open,segments,events")
VERSION = "Library version:   1.02.185 (2022-05-18)\nDriver version:    4.47.0\n"
NO_DEVICES = "No devices found\n"
NO_SUCH_DEVICE = "Device does not exist.\nCommand failed.\n"

P = ParamSpec("P")
T = TypeVar("T")


def ioctl_failed(op: Op, target: str, number: int) -> Failed:
    """libdevmapper's text: `target` is "NAME UUID", "NAME " (no uuid) or "NAME (254:N)"."""
    return Failed(f"device-mapper: {op.value} ioctl on {target} failed: "
                  f"{os.strerror(number)}\nCommand failed.\n")


UDEV_OPTIONS = ("--noudevsync", "--noudevrules", "--verifyudev")


class Dmsetup:
    """`dmsetup ARGS` on a kernel model: stdout, or `Failed` with dmsetup's stderr."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def run(self, args: list[str]) -> str:
        """Answer one dmsetup command; an errno the model refuses with becomes dmsetup's text
        for the ioctl that met it, naming the device as that ioctl did."""
        kernel = self.kernel
        # Global options, accepted anywhere (getopt), about udev alone: not to wait for it,
        # its dm rules off, and to make the nodes whatever udev does (the model's nodes are
        # always there).
        args = [word for word in args if word not in UDEV_OPTIONS]
        match args:
            case ["version"]:
                return VERSION
            case ["ls"]:
                return self._all(lambda d: f"{d.name}\t({DM_MAJOR}:{d.minor})\n")
            case ["status"]:
                return self._all(lambda d: f"{d.name}: {self._status_line(d.name)}")
            case ["table"]:
                return self._all(lambda d: f"{d.name}: {self._table_line(d.name)}")
            case [*words] if tuple(words) == INFO_ARGV:
                return self._all(lambda d: self._info_columns(self._info(d.name)))
            case [*words, name] if tuple(words) == INFO_ARGV:
                return self._info_columns(self._info(name))
            case ["info", name]:
                return self._info_plain(self._info(name))
            case ["status", name]:
                return self._status_line(name)
            case ["table", name]:
                return self._table_line(name)
            case ["create", name, *options]:
                return self._create(name, options)
            case ["load", name, *options]:
                values, readonly = _table_options(options, {"--table"})
                _ask(Op.LOAD, f"{name} ", kernel.load, name, values["--table"], readonly)
                return ""
            case ["suspend", name]:
                _ask(Op.SUSPEND, f"{name} ", kernel.suspend, name)
                return ""
            case ["resume", name]:
                _ask(Op.RESUME, f"{name} ", kernel.resume, name)
                return ""
            case ["remove", name]:
                _ask(Op.REMOVE, f"{name} ", kernel.remove, name)
                return ""
            case ["remove", "--deferred", name]:
                _ask(Op.REMOVE, f"{name} ", kernel.remove, name, deferred=True)
                return ""
            case ["message", name, "0", *words] if words:
                _ask(Op.MESSAGE, f"{name} ", kernel.message, name, words)
                return ""
        raise AssertionError(f"FakeKernel does not know dmsetup {args!r}")

    # -- reading -----------------------------------------------------------------------------

    def _all(self, show: Callable[[DmDevice], str]) -> str:
        """Every device, in the kernel's order (LIST, then one ioctl each, as dmsetup does)."""
        devices = _ask(Op.LIST, "", self.kernel.names)
        if not devices:
            return NO_DEVICES
        return "".join(show(device) for device in devices)

    def _info(self, name: str) -> DmDevice:
        """info and status look the name up themselves and say so when it is missing."""
        return _shown(_ask(Op.INFO, f"{name} ", self.kernel.info, name))

    def _status_line(self, name: str) -> str:
        device = _shown(_ask(Op.STATUS, f"{name} ", self.kernel.status, name))
        return self._line(device, "status")

    def _table_line(self, name: str) -> str:
        return self._line(_ask(Op.TABLE, f"{name} ", self.kernel.table, name), "table")

    def _line(self, device: DmDevice, kind: Literal["status", "table"]) -> str:
        line = self.kernel.line(device, kind)
        if line is None:
            return "\n"
        start, length, target, params = line
        return f"{start} {length} {target} {params}\n"

    def _info_columns(self, device: DmDevice) -> str:
        live = device.live
        attr = "".join([
            "L" if live else "-",
            "I" if device.inactive else "-",
            "s" if device.suspended else "-",
            "r" if live and live.readonly else "w",
        ])
        return (f"DM_NAME='{device.name}':DM_UUID='{device.uuid}':DM_MAJOR='{DM_MAJOR}':"
                f"DM_MINOR='{device.minor}':DM_ATTR='{attr}':"
                f"DM_OPEN='{self.kernel.open_count(device)}':"
                f"DM_SEGMENTS='{1 if live else 0}':DM_EVENTS='{device.events}'\n")

    def _info_plain(self, device: DmDevice) -> str:
        tables = {(True, False): "LIVE", (True, True): "LIVE & INACTIVE",
                  (False, True): "INACTIVE", (False, False): "None"}
        live = device.live
        state = ("SUSPENDED" if device.suspended else "ACTIVE") + (
            " (READ-ONLY)" if live and live.readonly else "") + (
            " (DEFERRED REMOVE)" if device.deferred_remove else "")
        return (f"Name:              {device.name}\n"
                f"State:             {state}\n"
                f"Read Ahead:        256\n"
                f"Tables present:    {tables[(live is not None, device.inactive is not None)]}\n"
                f"Open count:        {self.kernel.open_count(device)}\n"
                f"Event number:      {device.events}\n"
                f"Major, minor:      {DM_MAJOR}, {device.minor}\n"
                f"Number of targets: {1 if live else 0}\n"
                f"UUID: {device.uuid}\n\n")

    # -- changing ----------------------------------------------------------------------------

    def _create(self, name: str, options: list[str]) -> str:
        values, readonly = _table_options(options, {"--uuid", "--table"})
        assert "--uuid" in values, "FakeKernel: production always names a uuid"
        uuid = values["--uuid"]
        device = _ask(Op.CREATE, f"{name} {uuid}", self.kernel.create, name, uuid)
        # libdevmapper's create with a table: create, reload and resume; a failed step removes
        # the device again, and the message names it by number, as the later ioctls did.
        step = Op.LOAD
        try:
            self.kernel.load(name, values["--table"], readonly)
            step = Op.RESUME
            self.kernel.resume(name)
        except Refused as refused:
            self.kernel.discard_device(device)
            raise ioctl_failed(step, f"{name} ({DM_MAJOR}:{device.minor})",
                               refused.number) from None
        return ""


def _ask(op: Op, target: str, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """One ioctl of the model; a refusal becomes dmsetup's text, naming the device `target`."""
    try:
        return call(*args, **kwargs)
    except Refused as refused:
        raise ioctl_failed(op, target, refused.number) from None


def _shown(device: DmDevice | None) -> DmDevice:
    """dmsetup's own words when INFO or STATUS found no device (the ioctl did not fail)."""
    if device is None:
        raise Failed(NO_SUCH_DEVICE)
    return device


def _table_options(options: list[str], allowed: set[str]) -> tuple[dict[str, str], bool]:
    """--uuid U, --table T and --readonly, in any order, each at most once."""
    values: dict[str, str] = {}
    readonly = False
    rest = list(options)
    while rest:
        word = rest.pop(0)
        if word == "--readonly" and not readonly:
            readonly = True
        elif word in allowed and word not in values and rest:
            values[word] = rest.pop(0)
        else:
            raise AssertionError(f"FakeKernel does not know the dmsetup option {word!r}")
    assert "--table" in values, f"FakeKernel: dmsetup without --table: {options!r}"
    return values, readonly
