"""The fake kernel: device-mapper, loop devices and the tools reconciler runs, in memory.

Why it exists: the unit tier must run every parser and every error path of production without
root or a kernel. `FakeKernel` implements `Host`, so it sits *under* the parsers: production
sends the argv it sends to the real machine and gets back the exact stdout, stderr and exit
codes the real tools gave, as captured from a real kernel in fixtures/dmsetup/*.json (checked
byte for byte by tests/unit/testing/test_fake_parity.py); or, driven through `LibdmClient`, it
answers libdevmapper's calls with the ioctl's errno. Either way it keeps the kernel's rules, so a
reconciler bug that would fail on a real machine fails here too.

One concept per module, each with its own notes on what is approximate and why:

- `model`: the kernel (dm devices, tables, pool targets, messages, loop devices, block I/O
  with copy-on-write and data space); an ioctl either changes it or raises `Refused(errno)`.
- `metadata`: what a pool's metadata holds (thin ids, mappings, transaction id, a held
  snapshot), keyed by its file so it outlives the pool device and reboots.
- `dmsetup`: argv to dmsetup's exact text, an errno worded as dmsetup words it.
- `tools`: losetup, stat, blockdev, blkdiscard, mkfs, e2fsck, resize2fs, thin_check, thin_ls.
- `libdm`: the libdevmapper functions LibdmClient calls, over the same model.
- `faults`: failures on demand, by errno at an ioctl (both drivers) or by text for a program.
- `host`: `FakeKernel`, which ties them together as a Host.
- `remote`: a FakeKernel in a process of its own and the Host that speaks to it over a pipe
  (`RemoteKernel`), so a benchmark can measure the daemon's memory without the model's.

Anything it does not know raises AssertionError: a fake that accepted what production should
never send would hide bugs.
"""

from reconciler.testing.fakekernel.faults import Faults, Op
from reconciler.testing.fakekernel.host import FakeKernel
from reconciler.testing.fakekernel.metadata import PoolMetadata, Thin

__all__ = ["FakeKernel", "Faults", "Op", "PoolMetadata", "Thin"]
