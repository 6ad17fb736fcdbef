"""One spec's text, parsed and validated where it enters: a DeviceSpec or a SpecError.

Knows nothing of files or directories (`specs.load` reads them, `specs.trust` decides whether
to believe them); what it accepts here is what a spec may say.
"""

from __future__ import annotations

import hashlib
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from reconciler.specs.model import (
    FILESYSTEMS,
    NAME_RE,
    SNAPSHOT_NAME_RE,
    Defaults,
    DeviceSpec,
    ParsedSpec,
    SpecError,
)
from reconciler.units import XFS_MIN_SIZE, Bytes, SizeError, format_size, parse_size
from reconciler.vocabulary import NO_LABELS, Filesystem

_KEYS = ("size", "parent", "filesystem", "active", "readonly", "labels", "nodes")
# Bounds of a spec's `nodes`: more patterns than any fleet needs, each as long as a Kubernetes
# node name may be (a DNS subdomain, 253 characters).
MAX_NODE_PATTERNS = 64
MAX_NODE_PATTERN_CHARS = 253

def _nodes(value: object) -> tuple[str, ...]:
    """A spec's `nodes` key, validated."""
    if not isinstance(value, list) or not value:
        raise SpecError(f"key 'nodes': expected a non-empty list of node-name globs, "
                        f"got {value!r}")
    if len(value) > MAX_NODE_PATTERNS:
        raise SpecError(f"key 'nodes': {len(value)} patterns, more than the "
                        f"{MAX_NODE_PATTERNS} a spec may give")
    for pattern in value:
        if not isinstance(pattern, str) or not pattern:
            raise SpecError(f"key 'nodes': {pattern!r} is not a non-empty string")
        if len(pattern) > MAX_NODE_PATTERN_CHARS:
            raise SpecError(f"key 'nodes': a pattern of {len(pattern)} characters, longer "
                            f"than the {MAX_NODE_PATTERN_CHARS} of a node name")
        if not pattern.isprintable():
            raise SpecError(f"key 'nodes': {pattern!r} holds a control character")
    return tuple(value)


def _size(value: object) -> Bytes:
    """A spec's `size` key, validated."""
    try:
        size = parse_size(value)
    except SizeError as exc:
        raise SpecError(f"key 'size': {exc}") from None
    if size <= 0 or size % 512:
        raise SpecError(f"key 'size': must be a positive multiple of 512 bytes, got {size}")
    return size


def _flags(raw: Mapping[str, object]) -> dict[str, bool]:
    """A spec's `active` and `readonly` keys, validated, with their defaults."""
    flags = {}
    for key, default in (("active", True), ("readonly", False)):
        value = raw.get(key, default)
        if not isinstance(value, bool):
            raise SpecError(f"key {key!r}: expected true or false, got {value!r}")
        flags[key] = value
    return flags


def parse_spec(name: str, text: str, defaults: Defaults) -> DeviceSpec:
    """Parse one spec's text, the config's defaults for what it leaves out; raises SpecError
    naming the key at fault."""
    return parse_file(name, text, defaults).spec


# What a scan made of each spec text, by text: spec files are often the same bytes under
# many names (one kind of device, many devices), and tomllib and the checks of the keys were
# most of a file's cost at start-up. Bounded: a directory of all different texts stops
# filling it.
TEXT_MEMO_MAX = 1024


@dataclass(slots=True)
class KnownText:
    """A spec text's tomllib tables (only read, never changed) and digest; once a file of
    it parsed without error, what it parsed to and the defaults it was parsed with: every
    other file of the same bytes is then that spec under its own name."""

    raw: dict[str, Any]
    digest: str
    made: tuple[Defaults, ParsedSpec] | None = None


TextMemo = dict[str, KnownText]


def _read_toml(text: str, memo: TextMemo | None) -> KnownText:
    """tomllib's tables of a spec text and its digest (interned), from `memo` if there."""
    known = None if memo is None else memo.get(text)
    if known is not None:
        return known
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"not valid TOML: {exc}") from None
    known = KnownText(raw, sys.intern(hashlib.sha256(text.encode()).hexdigest()))
    if memo is not None and len(memo) < TEXT_MEMO_MAX:
        memo[text] = known
    return known


def parse_file(name: str, text: str, defaults: Defaults,
               memo: TextMemo | None = None) -> ParsedSpec:
    """Parse one spec's text into its own words (`ParsedSpec`); raises SpecError naming the
    key at fault. With `memo`, a text parsed before (under any name) is not parsed or
    checked again: only what depends on the name is."""
    if not NAME_RE.fullmatch(name):
        raise SpecError(f"bad name {name!r}: must match {NAME_RE.pattern}")
    if SNAPSHOT_NAME_RE.fullmatch(name):
        raise SpecError(f"bad name {name!r}: names snap-<number> and snap-base-<number> "
                        "belong to the snapshotter API")
    known = _read_toml(text, memo)
    if known.made is not None and known.made[0] == defaults:
        return _renamed(known.made[1], name)
    parsed = _parsed(name, known.raw, known.digest, defaults)
    known.made = (defaults, parsed)
    return parsed


def _renamed(parsed: ParsedSpec, name: str) -> ParsedSpec:
    """A good text's spec under another file's name; its parent then checked again (the
    one check of the keys that depends on the name)."""
    spec = parsed.spec
    if spec.parent == name:
        raise SpecError(_OWN_PARENT)
    # replace(), not a DeviceSpec spelled out: a field added to it later is carried over.
    return replace(parsed, spec=replace(
        spec, name=sys.intern(name), labels=dict(spec.labels) if spec.labels else NO_LABELS))


_OWN_PARENT = "key 'parent': a device cannot be its own parent"


def _parsed(name: str, raw: dict[str, Any], digest: str, defaults: Defaults) -> ParsedSpec:
    """parse_file's checks of the keys, and the spec they make."""
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise SpecError(f"unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")

    parent = raw.get("parent")
    if parent is not None:
        if not isinstance(parent, str) or not NAME_RE.fullmatch(parent):
            raise SpecError(f"key 'parent': {parent!r} is not a device name")
        if parent == name:
            raise SpecError(_OWN_PARENT)

    size = _size(raw["size"]) if "size" in raw else defaults.size

    filesystem = raw.get("filesystem", defaults.filesystem)
    if filesystem not in FILESYSTEMS:
        raise SpecError(f"key 'filesystem': {filesystem!r} is not one of {', '.join(FILESYSTEMS)}")
    if parent is None and filesystem == "xfs" and size < XFS_MIN_SIZE:
        raise SpecError(f"key 'size': {format_size(size)} is too small for filesystem "
                        f"\"xfs\": mkfs.xfs makes no filesystem under {format_size(XFS_MIN_SIZE)}")

    flags = _flags(raw)

    labels = raw.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise SpecError("key 'labels': expected a table of string keys to string values")

    nodes = _nodes(raw["nodes"]) if "nodes" in raw else None

    spec = DeviceSpec(
        # Interned, as the store's records are (store.rows): a device's spec and record
        # then hold one string of each between them.
        name=sys.intern(name),
        size=size,
        filesystem=Filesystem(filesystem),
        parent=parent,
        active=flags["active"],
        readonly=flags["readonly"],
        labels=dict(labels) if labels else NO_LABELS,
        digest=digest,
        nodes=nodes,
    )
    return ParsedSpec(spec, own_size="size" in raw, own_filesystem="filesystem" in raw)


def stored_spec(
    name: str, size: int, filesystem: str, parent: str | None, active: bool, readonly: bool,
    labels: Mapping[str, str],
) -> DeviceSpec:
    """A spec kept in the store rather than in a file (the snapshotter API's devices)."""
    if filesystem not in FILESYSTEMS:
        raise SpecError(f"filesystem {filesystem!r} is not one of {', '.join(FILESYSTEMS)}")
    fs = Filesystem(filesystem)
    # The value, not the member: the digest stays what earlier versions stored.
    text = repr((size, fs.value, parent, active, readonly, sorted(labels.items())))
    return DeviceSpec(
        name=sys.intern(name), size=Bytes(size), filesystem=fs, parent=parent,
        active=active, readonly=readonly, labels=dict(labels) if labels else NO_LABELS,
        digest=sys.intern(hashlib.sha256(text.encode()).hexdigest()),
    )
