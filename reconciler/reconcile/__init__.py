"""reconcile: decide and drive. Compares specs with the store and the kernel, then moves each
device's machine one kernel call at a time (engine), observing the kernel with a constant
number of calls per pass (observe)."""
