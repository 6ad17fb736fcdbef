"""`reconciler containerd-config`: the containerd drop-in that makes our daemon a snapshotter
of the containerd on this node, printed for that containerd's version.

containerd moved its keys between versions: 1.6 and 1.7 read config version 2 with the CRI
plugin under `io.containerd.grpc.v1.cri` (1.7 added a snapshotter per runtime handler), 2.x
reads version 3 with CRI split into `io.containerd.cri.v1.images` and `...runtime`, pulls
through its transfer service, and chooses a pull's snapshotter per runtime handler only from
`runtime_platforms`. An operator who writes the TOML by hand gets one of these wrong and
containerd ignores the key it does not know, so the command writes it: the proxy plugin at
the config's `grpc_socket`, a runtime handler `reconciler` (runc) on our snapshotter, and our
snapshotter as CRI's default. runc's cgroup driver must be kubelet's (`--cgroup-driver`): the
handler is a runtime of its own, so it does not inherit the node's runc options (`SystemdCgroup`),
and in 1.x the drop-in's CRI section replaces the node's, runc's included. A command's body of
its own, beside `reconciler.status` below
the CLI, it asks the machine only `containerd --version`, through the Host every program runs
by.
"""

from __future__ import annotations

import platform
import re
import sys
from enum import StrEnum
from pathlib import Path

from reconciler.config import Settings
from reconciler.config.render import toml_string
from reconciler.dm.host import Host

# The name containerd knows our daemon by: the proxy plugin's, the runtime handler's (a
# RuntimeClass's `handler`) and the snapshotter's that `ctr --snapshotter` takes.
NAME = "reconciler"
# A version word of `containerd --version`: "v1.6.20", "1.6.20~ds1" (Debian), "v2.3.4".
_VERSION_WORD = re.compile(r"v?(\d+)\.(\d+)(?:[.~+-]\S*)?")
# Go's architecture names (what containerd's platforms say) for the kernel's machine names.
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
            "i686": "386", "i386": "386"}


class Layout(StrEnum):
    """The config layouts containerd's versions read (reconciler.arguments copies them)."""

    V1_6 = "1.6"
    V1_7 = "1.7"
    V2 = "2.x"


class CgroupDriver(StrEnum):
    """kubelet's cgroup driver (its `cgroupDriver`), which runc must use too: with systemd's,
    a pod's cgroup parent is a slice that runc's cgroupfs driver cannot place a container in
    (reconciler.arguments copies the values)."""

    CGROUPFS = "cgroupfs"
    SYSTEMD = "systemd"


class DropInError(Exception):
    """Why no drop-in can be printed, in one line that names the fix (a usage error)."""


def layout_of(printed: str) -> Layout | None:
    """The layout of the containerd whose `--version` printed `printed` (its first line:
    "containerd <module or package> <version> <revision>"), or None for a version this
    command does not know (before 1.6, after 2.x) or a line it cannot read."""
    words = printed.split("\n", 1)[0].split()
    if len(words) < 3 or words[0] != "containerd":
        return None
    found = _VERSION_WORD.fullmatch(words[2])
    if found is None:
        return None
    major, minor = int(found.group(1)), int(found.group(2))
    if major == 2:
        return Layout.V2
    if (major, minor) == (1, 6):
        return Layout.V1_6
    if (major, minor) == (1, 7):
        return Layout.V1_7
    return None


CHOOSE = "give --containerd-version 1.6, 1.7 or 2.x"


def detect(host: Host) -> Layout:
    """The layout of the containerd on PATH; DropInError when there is none or its version is
    not one this command knows."""
    done = host.run(["containerd", "--version"])
    if done.rc == 127:
        raise DropInError(f"no containerd on PATH to ask its version: {CHOOSE}")
    layout = layout_of(done.stdout) if done.ok else None
    if layout is None:
        said = " ".join((done.stdout or done.stderr).split()) or f"exit status {done.rc}"
        raise DropInError(f"`containerd --version` gave a version this command does not know "
                          f"({said!r}): {CHOOSE}")
    return layout


def node_platform() -> str:
    """This node's platform as containerd spells it ("linux/amd64")."""
    machine = platform.machine()
    return f"linux/{_GO_ARCH.get(machine, machine)}"


def drop_in(settings: Settings, source: Path | None, layout: Layout, *, default: bool = True,
            node: str | None = None, cgroup: CgroupDriver = CgroupDriver.CGROUPFS) -> str:
    """The TOML drop-in for `layout`: our proxy plugin at `settings.grpc_socket`, the runtime
    handler on our snapshotter, and (`default`) our snapshotter as CRI's default; every runc
    handler it declares on kubelet's `cgroup` driver. `source`: the config file it came from
    (shown). DropInError when grpc_socket is unset or the layout cannot do what is asked."""
    # One line, whatever the path holds.
    path = " ".join(str(source).splitlines()) if source is not None else None
    if settings.grpc_socket is None:
        raise DropInError(f"grpc_socket is not set in {path or 'the defaults'}: set it to the "
                          "socket the daemon serves containerd's snapshots API on, and restart "
                          "the daemon")
    if layout is Layout.V1_6 and not default:
        raise DropInError("containerd 1.6 has no snapshotter per runtime handler (1.7 added "
                          "it): --handler-only needs containerd 1.7 or newer")
    shown = path or "no config file"
    head = (f"# containerd {layout} drop-in from `reconciler containerd-config` "
            f"(grpc_socket of {shown}).\n")
    socket = toml_string(str(settings.grpc_socket))
    if layout is Layout.V2:
        return head + _v2(socket, default, node or node_platform(), cgroup)
    return head + _v1(socket, layout, default, cgroup)


def _runc_options(table: str, cgroup: CgroupDriver, indent: str) -> list[str]:
    """The options of the runc handler at `table` for kubelet's cgroup driver: none for
    cgroupfs (runc's default), SystemdCgroup for systemd."""
    if cgroup is CgroupDriver.CGROUPFS:
        return [f"{indent}# runc's cgroupfs driver (its default): kubelet's cgroupDriver must be "
                f"cgroupfs;\n{indent}# for systemd's give --cgroup-driver systemd."]
    return [f"{indent}[{table}.options]",
            f"{indent}  SystemdCgroup = true  # kubelet's cgroupDriver is systemd"]


_PROXY = """
# Our daemon, as containerd's snapshotter "reconciler": the unix socket it serves.
[proxy_plugins.reconciler]
  type = "snapshot"
  address = {socket}
"""


def _v1(socket: str, layout: Layout, default: bool, cgroup: CgroupDriver) -> str:
    """Config version 2, for containerd 1.6 and 1.7."""
    cri = 'plugins."io.containerd.grpc.v1.cri".containerd'
    lines = [
        "# Save it as /etc/containerd/conf.d/reconciler.toml and add",
        '# `imports = ["/etc/containerd/conf.d/reconciler.toml"]` at the top of',
        "# /etc/containerd/config.toml (or paste it there), then restart containerd.",
        "# containerd 1.x replaces a whole plugin section with an imported file's: the",
        '# [plugins."io.containerd.grpc.v1.cri"] section below replaces config.toml\'s, so any',
        "# other CRI setting of the node (sandbox_image, cni, registry, runtimes) goes here too.",
        "version = 2",
        _PROXY.format(socket=socket),
        "# CRI (kubelet's pods). runc stays the default runtime: declaring runtimes replaces",
        "# containerd's own list, so runc is declared again.",
        f"[{cri}]",
    ]
    if default:
        lines.append('  snapshotter = "reconciler"  # every pod\'s images and root filesystems')
    lines += [
        '  default_runtime_name = "runc"',
        f"  [{cri}.runtimes.runc]",
        '    runtime_type = "io.containerd.runc.v2"',
        *_runc_options(f"{cri}.runtimes.runc", cgroup, "    "),
        "  # The runtime handler `reconciler` (RuntimeClass handler: reconciler): runc v2.",
        f"  [{cri}.runtimes.reconciler]",
        '    runtime_type = "io.containerd.runc.v2"',
    ]
    if layout is Layout.V1_6:
        lines.append("    # No `snapshotter` here: containerd 1.6 has none per runtime handler "
                     "(1.7 added\n    # it), so this handler's pods use CRI's default above.")
    else:
        lines.append('    snapshotter = "reconciler"  # its containers\' root filesystems')
    lines += _runc_options(f"{cri}.runtimes.reconciler", cgroup, "    ")
    return "\n".join(lines) + "\n"


def _v2(socket: str, default: bool, node: str, cgroup: CgroupDriver) -> str:
    """Config version 3, for containerd 2.x (2.3 migrates it to its version 4 itself)."""
    images = "plugins.'io.containerd.cri.v1.images'"
    runtime = "plugins.'io.containerd.cri.v1.runtime'"
    transfer = "plugins.'io.containerd.transfer.v1.local'"
    lines = [
        "# Save it as /etc/containerd/conf.d/reconciler.toml: containerd 2.x's default config",
        "# imports /etc/containerd/conf.d/*.toml (a config.toml of your own needs that",
        "# `imports` line at its top). Restart containerd.",
        "version = 3",
        _PROXY.format(socket=socket).rstrip("\n"),
        "  # No `capabilities`: containerd 2.x asks a snapshotter for `rebase` (parallel unpack:",
        "  # each layer prepared without a parent, rebased onto it at Commit; a thin snapshot",
        "  # cannot change its origin) and `remap-ids` (user-namespace ID mapping); we do",
        "  # neither. No `exports`: `root` (a directory of snapshots, for kubelet's image",
        "  # filesystem figures) and `enable_remote_snapshot_annotations` (lazy pulls) are",
        "  # not what a thin pool has.",
        "",
        "# CRI's images. A pull made for the runtime handler `reconciler` (kubelet names it in",
        "# ImageSpec.runtime_handler, or the pod annotation io.containerd.cri.runtime-handler",
        "# does) unpacks into our snapshotter; any other pull into CRI's default snapshotter",
        "# (and CRI unpacks the image into ours when it creates the handler's container).",
        f"[{images}]",
    ]
    if default:
        lines.append('  snapshotter = "reconciler"  # the default: every pod\'s images')
    lines += [
        f"  [{images}.runtime_platforms.reconciler]",
        f"    platform = {toml_string(node)}",
        '    snapshotter = "reconciler"',
        "",
        "# The runtime handler `reconciler` (RuntimeClass handler: reconciler): runc v2, its",
        "# containers' root filesystems on our snapshotter.",
        f"[{runtime}.containerd.runtimes.reconciler]",
        '  runtime_type = "io.containerd.runc.v2"',
        '  snapshotter = "reconciler"',
        *_runc_options(f"{runtime}.containerd.runtimes.reconciler", cgroup, ""),
        "",
        "# The transfer service (2.x's pulls, CRI's and `ctr images pull/import`'s) unpacks only",
        "# into the snapshotters listed here. Listing any replaces containerd's default list,",
        "# so its default (overlayfs) is listed again.",
    ]
    for snapshotter in ("overlayfs", NAME):
        lines += [f"[[{transfer}.unpack_config]]", f"  platform = {toml_string(node)}",
                  f'  snapshotter = "{snapshotter}"', '  differ = "walking"']
    return "\n".join(lines) + "\n"


def print_containerd_config(settings: Settings, source: Path | None, host: Host,
                            requested: str | None, handler_only: bool, cgroup: str) -> int:
    """`containerd-config`: the drop-in for the layout asked for, else the containerd on
    PATH's, with runc on the `cgroup` driver, on stdout (exit 0); or why there is none, in
    one line (exit 2, a usage error: reconciler.cli's exit codes)."""
    try:
        layout = Layout(requested) if requested is not None else detect(host)
        text = drop_in(settings, source, layout, default=not handler_only,
                       cgroup=CgroupDriver(cgroup))
    except DropInError as exc:
        print(f"reconciler: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0
