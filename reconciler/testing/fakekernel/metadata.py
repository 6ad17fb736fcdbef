"""What a thin-pool's metadata device holds, in the fake kernel: thin ids, their block
mappings, the transaction id, a held metadata snapshot, and how many metadata blocks it uses.

Kept apart from the dm devices (`model`) because it lives longer than they do: it is keyed by
the metadata's backing file, so it outlives the pool device and a reboot, as the on-disk
metadata does. The file itself holds only the superblock's magic number, which is what
production (`has_thin_superblock`), thin_check and the pool target look for.

What is approximate (no capture can pin it down):
- metadata blocks in use: the kernel's reserve (a tenth of the device, at most 4096 blocks),
  a fixed part, one space-map bitmap per 16320 blocks, one btree node per mapping tree (a
  snapshot shares its origin's tree until either is written) and one for a held metadata
  snapshot. This reproduces every captured value; bigger pools are estimates.
- the held metadata root is always block 46, the number the capture shows.
- everything is committed at once: a crash loses no metadata here.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

METADATA_BLOCK = 4096
THIN_MAGIC = 27022010
THIN_MAGIC_OFFSET = 32
MAX_THIN_ID = (1 << 24) - 1
HELD_ROOT = 46  # the captured block number of a held metadata snapshot
BITMAP_ENTRIES = 16320  # space-map entries per 4 KiB bitmap block: (4096 - 16) * 4
TREE_LEAF_ENTRIES = 252  # mappings per 4 KiB btree leaf
METADATA_FIXED_BLOCKS = 7  # superblock, space-map and device-tree roots: calibrated (418)


@dataclass
class Thin:
    """One thin id: its virtual -> physical block mappings and the btree holding them."""

    mappings: dict[int, int] = field(default_factory=dict)
    tree: int = 0


@dataclass
class MetadataSnapshot:
    """What `reserve_metadata_snap` froze: the thin ids as they were then."""

    thins: dict[int, Thin]
    transaction_id: int


@dataclass
class PoolMetadata:
    """A thin-pool's metadata; keyed by the metadata's backing file, it outlives the pool device
    and reboots, as the on-disk metadata does."""

    total_blocks: int
    block_sectors: int
    data_blocks: int = 0
    transaction_id: int = 0
    thins: dict[int, Thin] = field(default_factory=dict)
    refcounts: dict[int, int] = field(default_factory=dict)
    held: MetadataSnapshot | None = None
    next_tree: int = 1
    alloc_hint: int = 0

    @property
    def held_root(self) -> int | None:
        """The metadata block of the held snapshot, if one is held."""
        return None if self.held is None else HELD_ROOT

    def used_blocks(self) -> int:
        """Metadata blocks in use as the pool status counts them (approximate: module doc)."""
        reserve = min(4096, self.total_blocks // 10)  # the kernel counts its reserve as used
        space_maps = _bitmaps(self.total_blocks) + _bitmaps(self.data_blocks)
        trees: dict[int, int] = {}
        for thin in self.thins.values():
            trees[thin.tree] = max(trees.get(thin.tree, 0), len(thin.mappings))
        nodes = sum(_tree_nodes(count) for count in trees.values())
        held = 0 if self.held is None else 1
        return reserve + METADATA_FIXED_BLOCKS + space_maps + nodes + held

    def new_tree(self) -> int:
        """A btree of its own (for a new thin, or one whose shared tree is written)."""
        self.next_tree += 1
        return self.next_tree

    def unref(self, physical: int) -> None:
        """Drop one reference to a data block; the last one frees it."""
        self.refcounts[physical] -= 1
        if self.refcounts[physical] == 0:
            del self.refcounts[physical]

    def unmap(self, thin: Thin, virtual: int) -> None:
        """Forget one mapping (a discard); a shared btree is copied first."""
        self.diverge(thin)
        self.unref(thin.mappings.pop(virtual))

    def diverge(self, thin: Thin) -> None:
        """Changing a btree shared with a snapshot copies it (for the metadata count)."""
        if any(other is not thin and other.tree == thin.tree for other in self.thins.values()):
            thin.tree = self.new_tree()


def _bitmaps(blocks: int) -> int:
    return max(1, math.ceil(blocks / BITMAP_ENTRIES))


def _tree_nodes(mappings: int) -> int:
    leaves = max(1, math.ceil(mappings / TREE_LEAF_ENTRIES))
    return leaves if leaves == 1 else leaves + math.ceil(leaves / TREE_LEAF_ENTRIES)


def metadata_key(path: Path) -> str:
    """Metadata is found by its file, however the file was named to losetup."""
    return str(path.resolve())


def has_magic(block: bytes) -> bool:
    """Whether a first metadata block holds the thin superblock's magic number."""
    return len(block) >= THIN_MAGIC_OFFSET + 8 and struct.unpack_from(
        "<Q", block, THIN_MAGIC_OFFSET)[0] == THIN_MAGIC


def magic() -> bytes:
    """The magic number as the superblock stores it (at THIN_MAGIC_OFFSET)."""
    return struct.pack("<Q", THIN_MAGIC)


def read_at(path: Path, offset: int, length: int) -> bytes:
    """`length` bytes of a backing file at `offset`; past its end reads as zeros."""
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    return data + bytes(length - len(data))


def write_at(path: Path, offset: int, data: bytes) -> None:
    """Write into a backing file at `offset`."""
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)
