"""A seeded simulation that hunts for what the hand-written tests miss (issue 23).

Test support, never imported by the product. One seed drives a random schedule against the
fake kernel: spec writes (valid and not), deletes, renames, special files, config reloads,
containerd's snapshotter calls, operator requests, kernel faults and crashes at random kernel
calls or store writes followed by a restart (sometimes after a reboot); after every pass,
every step and a final convergence it checks the daemon's promises.

- `schedule`: the steps and how a seed draws them.
- `actions`: what each step does, and the passes the daemon runs after it.
- `engine`: `Simulation`, the simulated daemon and its world; crash and restart.
- `crashes`: the crash plan, and the Host and Store that die where it says.
- `invariants`: the promises, `held_names`, and `KNOWN_OPEN` (bugs still open).
- `run`: `simulate(seed)`, the summary, and `scripts/simulate`'s command line.

docs/reliability.md says what it drives, the invariants and how to replay a seed.
"""
