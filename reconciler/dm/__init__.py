"""dm: the only code that talks to the kernel (device-mapper, loop devices, mkfs).

Everything here goes through `Host` (reconciler.dm.host). Kernel text is parsed strictly in
`parse`, errors are classified in `errors`, and `FakeKernel` (reconciler.dm.fake) keeps the
kernel's rules for the unit tests.
"""
