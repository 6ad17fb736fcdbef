"""reconcile: decide and drive. Compares specs with the store and the kernel, then moves each
device's machine one kernel call at a time.

One file per question (docs/architecture.md has the layers inside this package):
`reconciler` runs passes and keeps what outlives them; `pass_context` is one pass's world;
`desired` loads and checks specs; `decide` names a device's next step (pure); `drive` runs a
device's steps and chooses retry or Faulty; `steps` holds one function per step; `recovery`
settles what a crash left; `maintenance` runs operator requests and finds orphans; `observe`
reads the kernel with a constant number of calls; `pool_setup` brings the pool up; `retry`
is the backoff schedule.
"""
