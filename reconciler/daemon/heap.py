"""The daemon's heap: when the cyclic collector runs, what it never walks again, and how
glibc hands large blocks back. At 50,000 devices a start-up builds millions of objects that
live as long as the daemon; each collection that walks them again costs, and so does a
heap that keeps its freed middle."""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from typing import TypeVar

R = TypeVar("R")

# Allocations between two young-generation collections (CPython's default: 700).
YOUNG_COLLECTION_EVERY = 20_000


def collect_less_often() -> None:
    """Collect young objects less often, from before the first pass: a start-up over 50,000
    devices allocates millions of objects that live as long as the daemon (records, parse
    caches), and with CPython's defaults the collector walked them again and again while
    they were being built (1.6 of 4.7 s of CPU). What a pass allocates is freed by
    reference counts; cycles wait a little longer for their collection."""
    gc.set_threshold(YOUNG_COLLECTION_EVERY, 20, 20)


# glibc's mallopt parameter (malloc.h), and the value it is pinned at: glibc's own default.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def pin_mmap_threshold(mallopt: Callable[[int, int], int] | None = None) -> bool:
    """Keep blocks of 128 KiB and up in mappings of their own, returned to the system when
    freed (whether glibc's mallopt took it). glibc raises its threshold to the size of each
    mapped block freed: after the first 7 MB listing text was freed, every later one, and
    every 50,000-entry dict or list, came from the heap, whose freed middle is never given
    back; at 50,000 devices the passes after a change left the daemon 30 MB larger. Setting
    the threshold turns that raising off. Elsewhere than glibc: nothing to pin."""
    if mallopt is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (AttributeError, OSError):
            return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def settle_heap(collect: bool) -> None:
    """Once the first pass has built what lives as long as the daemon (records, parse
    caches, the gRPC and logging machinery): move it out of the cyclic collector's reach,
    and collect young objects less often. A pass over 10,000 devices allocates a few
    hundred thousand short-lived objects; with the defaults the collector walked the
    long-lived ones again several times per pass (200-500 ms of a 10,000-device resync).
    `collect`: collect before the freeze (see first_pass)."""
    if collect:
        gc.collect()
    gc.freeze()
    collect_less_often()


def first_pass(run: Callable[[], R], clean: Callable[[R], bool]) -> R:
    """The daemon's first pass (`run`) with the cyclic collector paused: its 46 collections
    walked what it was building (0.24 s of a 50,000-device start). Its heap is frozen
    (settle_heap) before the collector is back, whose first young collection would walk
    everything the pass built; collected first only when the pass did not end `clean`
    (its failures' cycles): a clean one left a few objects in cycles (5 at 50,000
    devices), frozen with the rest. A pass that raises is collected as usual after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        result = run()
        settle_heap(collect=not clean(result))
        return result
    finally:
        if enabled:
            gc.enable()
