"""Spec files: what the user wants, parsed and validated where it enters.

One TOML file per device, `<spec_dir>/<name>.toml`. A broken spec becomes a RejectedSpec with a
message that names the file and the problem; it never stops the other specs, and it never asks
for anything to be removed (a device whose spec is broken is left as it is).
Parents are resolved here, once (`resolve`): sizes and filesystems are inherited from the
parent's spec, or, for a parent without one, from the device the store holds as made (which
reconcile passes in), and cycles and parents that exist nowhere are refused.

A spec file is an order given to root: create, grow and, by its absence, remove. So only root
and the daemon's own user may give it. A spec file owned by another user is a rejected spec
(its device kept as it is), and a spec_dir that another user owns, or that its group or
everyone may write to, is a source error (nothing is removed): whoever can write there can
add specs and delete them. `allow_foreign_specs` accepts both, on purpose. A spec_dir on a
read-only mount (a Kubernetes ConfigMap volume: kubelet mounts it read-only and its directory
may be 0777) can be written through it by nobody, whatever its mode bits, so its mode is no
source error; its owner still is.

One directory may serve a fleet: a spec's `nodes` (shell globs) says which nodes it is for,
and on any other node it is as if its file were not there (its device, if any, is removed
under the same guard as a deleted file's), but for a snapshot on this node of a parent that
is not: that is a rejected spec. The `..`-prefixed entries kubelet's AtomicWriter keeps in a
ConfigMap volume (`..data`, `..data_tmp`, its timestamped directories) are never specs.

The package, by question: `model` (the shapes), `parse` (one spec's text), `trust` (whether
to believe the source), `cache` and `load` (reading the directory), `nodes` (which specs are
for this node), `resolve` (parents, once; only it makes DeviceSpecs of parsed files).
Importers use the names re-exported here.
"""

from reconciler.specs.cache import (
    RACY_SECONDS,
    SpecFileCache,
)
from reconciler.specs.load import (
    load_spec_dir,
    load_spec_files,
    read_file,
    read_spec,
    scan_spec_dir,
    scan_spec_files,
)
from reconciler.specs.model import (
    CONFIGMAP_DATA,
    FILESYSTEMS,
    NAME_RE,
    SNAPSHOT_NAME_RE,
    SPEC_SUFFIX,
    Defaults,
    DeviceSpec,
    KnownDevice,
    ParsedSpec,
    RejectedSpec,
    SpecError,
    SpecFiles,
    SpecSet,
    is_base_device,
    is_snapshot_device,
    is_spec_file,
    snapshot_name,
)
from reconciler.specs.nodes import (
    is_for_node,
    select_for_node,
)
from reconciler.specs.parse import (
    MAX_NODE_PATTERN_CHARS,
    MAX_NODE_PATTERNS,
    parse_file,
    parse_spec,
    stored_spec,
)
from reconciler.specs.resolve import (
    inherit,
    resolve,
    resolve_files,
)
from reconciler.specs.trust import (
    MAX_SPEC_BYTES,
    SpecSourceError,
    read_only_mount,
)
from reconciler.vocabulary import Filesystem

__all__ = [
    "CONFIGMAP_DATA",
    "FILESYSTEMS",
    "MAX_NODE_PATTERNS",
    "MAX_NODE_PATTERN_CHARS",
    "MAX_SPEC_BYTES",
    "NAME_RE",
    "RACY_SECONDS",
    "SNAPSHOT_NAME_RE",
    "SPEC_SUFFIX",
    "Defaults",
    "DeviceSpec",
    "Filesystem",
    "KnownDevice",
    "ParsedSpec",
    "RejectedSpec",
    "SpecError",
    "SpecFileCache",
    "SpecFiles",
    "SpecSet",
    "SpecSourceError",
    "inherit",
    "is_base_device",
    "is_for_node",
    "is_snapshot_device",
    "is_spec_file",
    "load_spec_dir",
    "load_spec_files",
    "parse_file",
    "parse_spec",
    "read_file",
    "read_only_mount",
    "read_spec",
    "resolve",
    "resolve_files",
    "scan_spec_dir",
    "scan_spec_files",
    "select_for_node",
    "snapshot_name",
    "stored_spec",
]
