"""dm: the only code that talks to the kernel (device-mapper, loop devices, mkfs).

Everything here goes through `Host` (reconciler.dm.host), or the libdevmapper a Host offers
(`driver`). Kernel text is parsed strictly in `parse` and errors are classified in `errors`.
The unit tests' stand-in for the machine, which keeps the kernel's rules, is test support
outside the product: `reconciler.testing.fakekernel.FakeKernel`.
"""
