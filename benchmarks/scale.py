"""Scale on the fake kernel: converged resync, start-up, spec-drop latency and memory at
1k, 10k and 50k devices. Run on demand, never in the test tiers:

    .venv/bin/python benchmarks/scale.py [--sizes 1000,10000,50000] [--json out/scale.json]
                                         [--kernel process|inline]

Each size gets a fresh state directory and FakeKernel; the devices are made by the
reconciler itself from spec files (filesystem "none": the cost measured is ours, not mkfs).
Prints a table, and whether cost grows linearly (time per device across sizes).

The devices are made in one process; the daemon is then measured in a fresh process of its
own (the made kernel handed over as a pickle), so that its peak RSS is one daemon's: no
freed arenas of the reconciler that made the devices. Start-up is that daemon's start (its
first pass, recovery included). `--kernel process` (the default) runs the fake kernel in a
process of its own (fakekernel.remote), as a real kernel is not in the daemon's process:
peak RSS is then the daemon's alone. `--kernel inline` keeps it in the daemon's process.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import pickle
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.config import Settings, settings_from_mapping
from reconciler.daemon.service import Daemon
from reconciler.daemon.wakeups import Wakeups
from reconciler.dm.crash import call_kind
from reconciler.dm.host import Completed
from reconciler.reconcile.reconciler import Reconciler
from reconciler.store import Store
from reconciler.testing.fakekernel import FakeKernel
from reconciler.testing.fakekernel.remote import RemoteKernel
from reconciler.vocabulary import ThinId

MUTATING = ("dmsetup create", "dmsetup remove", "dmsetup message", "dmsetup load",
            "dmsetup suspend", "dmsetup resume", "mkfs")
BURST = 100
RESYNCS = 5
# The made kernel, pickled for the daemon's process (see measure).
KERNEL_FILE = "kernel.pickle"


class TimedKernel(FakeKernel):
    """The fake kernel, noting when each call arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        # Seconds spent inside the fake kernel: it prints dmsetup's text for 10,000 devices
        # in Python, work a real kernel does in C; the resync is also shown without it.
        self.busy = 0.0

    def run(self, argv: Sequence[str]) -> Completed:
        started = time.perf_counter()
        self.times.append(started)
        try:
            return super().run(argv)
        finally:
            self.busy += time.perf_counter() - started

    def save(self, path: str) -> None:
        """Pickle this kernel, its call log emptied, for the daemon's process (measure)."""
        self.calls.clear()
        self.times.clear()
        self.busy = 0.0
        Path(path).write_bytes(pickle.dumps(self))

    # What the benchmark reads of the kernel, the same whether it is here or in a process.

    def calls_since(self, first: int) -> list[tuple[str, ...]]:
        return self.calls[first:]

    def call_count(self) -> int:
        return len(self.calls)

    def busy_seconds(self) -> float:
        return self.busy

    def creations_since(self, first: int) -> int:
        """create_thin messages sent since call `first`."""
        return sum(1 for words in self.calls[first:]
                   if words[:2] == ("dmsetup", "message") and "create_thin" in words)

    def created_since(self, first: int) -> list[tuple[float, int]]:
        """(time, thin id) of each create_thin since call `first`."""
        return [(self.times[i], int(self.calls[i][-1])) for i in range(first, len(self.calls))
                if self.calls[i][:2] == ("dmsetup", "message") and "create_thin" in self.calls[i]]


class KernelProcess(RemoteKernel):
    """A TimedKernel in a process of its own, read through the same methods."""

    def calls_since(self, first: int) -> list[tuple[str, ...]]:
        calls: list[tuple[str, ...]] = self.call("calls_since", first)
        return calls

    def call_count(self) -> int:
        count: int = self.call("call_count")
        return count

    def busy_seconds(self) -> float:
        busy: float = self.call("busy_seconds")
        return busy

    def creations_since(self, first: int) -> int:
        count: int = self.call("creations_since", first)
        return count

    def created_since(self, first: int) -> list[tuple[float, int]]:
        created: list[tuple[float, int]] = self.call("created_since", first)
        return created


Kernel = TimedKernel | KernelProcess


@dataclass
class Row:
    devices: int
    create_s: float
    resync_ms: float
    resync_ours_ms: float
    # CPU time of this process (with --kernel process, the daemon's alone): what a loaded
    # machine's wall clock cannot tell apart from waiting for a CPU.
    resync_cpu_ms: float
    resync_kernel_calls: int
    resync_mutations: int
    resync_sql_statements: int
    startup_s: float
    startup_cpu_s: float
    drop_p50_ms: float
    drop_p99_ms: float
    single_drop_p50_ms: float
    peak_rss_mb: float
    our_heap_mb: float


def settings_for(root: Path) -> Settings:
    return settings_from_mapping({
        "root_path": str(root / "state"), "pool_name": "bench",
        "loopback_data_size": "4TiB", "loopback_metadata_size": "16GiB",
        "base_image_size": "64MiB", "resync_interval": "1h",
    })


def count_sql(store: Store) -> list[str]:
    statements: list[str] = []
    store.trace(statements.append)
    return statements


def measure(devices: int, in_process: bool) -> Row:
    root = Path(tempfile.mkdtemp(prefix=f"scale{devices}-"))
    settings = settings_for(root)
    settings.specs_path.mkdir(parents=True)
    for i in range(devices):
        (settings.specs_path / f"d{i:06}.toml").write_text('filesystem = "none"\n')
    kernel: Kernel = TimedKernel() if in_process else KernelProcess.start(TimedKernel)
    try:
        create_s = make_all(settings, kernel)
        # The made kernel goes to the daemon's process as a file, its call log emptied.
        if isinstance(kernel, KernelProcess):
            kernel.call("save", str(root / KERNEL_FILE))
            kernel.stop()
        else:
            kernel.save(str(root / KERNEL_FILE))
        del kernel
        out = subprocess.run([sys.executable, __file__, "--daemon-of", str(root),
                              "--sizes", str(devices), "--kernel",
                              "inline" if in_process else "process"],
                             capture_output=True, text=True, check=True)
        return Row(devices=devices, create_s=round(create_s, 2), **json.loads(out.stdout))
    finally:
        # 10,000 spec files and a database per size: 60 MB a run, left in /tmp until now.
        shutil.rmtree(root, ignore_errors=True)


def make_all(settings: Settings, kernel: Kernel) -> float:
    """Seconds for one reconciler's pass to make every device (this process's, not the
    measured daemon's: what it leaves on the heap would inflate the daemon's peak RSS)."""
    store = Store(settings.database_path, time.time)
    started = time.perf_counter()
    assert Reconciler(settings, kernel, store).run_pass().ok
    store.close()
    return time.perf_counter() - started


def load_kernel(path: Path) -> TimedKernel:
    kernel: TimedKernel = pickle.loads(path.read_bytes())
    return kernel


def measure_daemon(root: Path, devices: int, in_process: bool) -> dict[str, float | int]:
    """The daemon's own process: start-up (its first pass, recovery included), converged
    resyncs, drops, and its peak RSS, with nothing else ever allocated in this process."""
    settings = settings_for(root)
    path = root / KERNEL_FILE
    kernel: Kernel = load_kernel(path) if in_process \
        else KernelProcess.start(lambda: load_kernel(path))
    try:
        return _measure_daemon(settings, kernel, devices)
    finally:
        if isinstance(kernel, KernelProcess):
            kernel.stop()


def _measure_daemon(settings: Settings, kernel: Kernel, devices: int) -> dict[str, float | int]:
    daemon = Daemon(settings, kernel, wakeups=Wakeups())
    started, cpu_started = time.perf_counter(), time.process_time()
    daemon.start()
    startup_s = time.perf_counter() - started
    startup_cpu_s = time.process_time() - cpu_started
    assert daemon.passes == 1 and daemon.last_pass_error is None

    engine, store = daemon.reconciler, daemon.store
    timings, ours, cpu, calls, mutations, sql = [], [], [], 0, 0, 0
    for _ in range(RESYNCS):
        statements = count_sql(store)
        before = kernel.call_count()
        busy = kernel.busy_seconds()
        started, cpu_started = time.perf_counter(), time.process_time()
        result = engine.run_pass()
        timings.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        ours.append(timings[-1] - (kernel.busy_seconds() - busy))
        store.trace(None)
        assert result.ok and len(result.converged) == devices
        made = kernel.calls_since(before)
        calls = len(made)
        mutations = sum(1 for c in made if call_kind(c).startswith(MUTATING))
        sql = len(statements)
    del result

    drop, single = drop_latencies(settings, kernel, daemon)
    peak_rss_mb = peak_rss()
    daemon.close()
    del daemon, engine, store
    gc.unfreeze()
    gc.collect()
    return {"resync_ms": round(statistics.median(timings) * 1000, 1),
            "resync_ours_ms": round(statistics.median(ours) * 1000, 1),
            "resync_cpu_ms": round(statistics.median(cpu) * 1000, 1),
            "resync_kernel_calls": calls, "resync_mutations": mutations,
            "resync_sql_statements": sql,
            "startup_s": round(startup_s, 3), "startup_cpu_s": round(startup_cpu_s, 3),
            "drop_p50_ms": round(statistics.median(drop) * 1000, 1),
            "drop_p99_ms": round(sorted(drop)[int(len(drop) * 0.99) - 1] * 1000, 1),
            "single_drop_p50_ms": round(statistics.median(single) * 1000, 1),
            "peak_rss_mb": round(peak_rss_mb, 1),
            "our_heap_mb": round(our_heap_mb(settings, kernel), 1)}


def peak_rss() -> float:
    """This process's peak resident set (VmHWM), in MB: the daemon's alone, as this process
    ran nothing else (the fake kernel, with --kernel process, is a process of its own)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def our_heap_mb(settings: Settings, kernel: Kernel) -> float:
    """Python heap held by a started reconciler over all the devices (the fake kernel, which
    shares this process, excluded): what the daemon itself needs."""
    tracemalloc.start()
    store = Store(settings.database_path, time.time)
    engine = Reconciler(settings, kernel, store)
    engine.run_pass()
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    ours = snapshot.filter_traces([tracemalloc.Filter(False, "*/reconciler/testing/fakekernel/*"),
                                   tracemalloc.Filter(False, __file__)])
    store.close()
    return sum(stat.size for stat in ours.statistics("filename")) / (1 << 20)


def drop_latencies(settings: Settings, kernel: Kernel,
                   daemon: Daemon) -> tuple[list[float], list[float]]:
    """Spec files dropped while the daemon runs: seconds from a file's write to the kernel
    call that creates its thin device, for a burst of BURST files and for 20 single drops."""
    thread = threading.Thread(target=lambda: [None for _ in iter(
        lambda: daemon.step(daemon._timeout()), False)], daemon=True)
    thread.start()
    store = Store(settings.database_path, time.time)

    def drop(names: list[str]) -> list[float]:
        written: dict[str, float] = {}
        first_call = kernel.call_count()
        for name in names:
            (settings.specs_path / f"{name}.toml").write_text('filesystem = "none"\n')
            written[name] = time.perf_counter()
        deadline = time.monotonic() + 600

        # Watching the kernel's call log, not the database: reading rows every few
        # milliseconds would take the GIL from the daemon thread being measured.
        while kernel.creations_since(first_call) < len(names) and time.monotonic() < deadline:
            time.sleep(0.005)
        # The dropped names' records alone: all 50,000 (store.devices) built in this
        # process at each drop would count in the daemon's peak RSS.
        made = {r.device_id: r.name for r in map(store.device, names) if r is not None}
        latencies = []
        # perf_counter is CLOCK_MONOTONIC: the kernel process's times compare with ours.
        for at, thin_id in kernel.created_since(first_call):
            made_name = made.get(ThinId(thin_id))
            if made_name is not None and made_name in written:
                latencies.append(at - written.pop(made_name))
        assert not written, f"no create_thin seen for {sorted(written)}"
        return latencies

    burst = drop([f"burst{i:04}" for i in range(BURST)])
    single = [latency for i in range(20) for latency in drop([f"single{i:02}"])]
    daemon.request_stop()
    thread.join(timeout=60)
    store.close()
    return burst, single


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--json", type=Path, default=Path("out/scale.json"))
    parser.add_argument("--kernel", choices=("process", "inline"), default="process",
                        help="the fake kernel in a process of its own (peak RSS is then the "
                             "daemon's alone), or in the benchmark's")
    parser.add_argument("--daemon-of", type=Path, help=argparse.SUPPRESS)  # see measure
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if args.daemon_of is not None:
        json.dump(measure_daemon(args.daemon_of, int(args.sizes), args.kernel == "inline"),
                  sys.stdout)
        return 0
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        # One process per size: peak RSS is per process.
        if os.environ.get("SCALE_CHILD"):
            rows.append(measure(size, args.kernel == "inline"))
            continue
        out = subprocess.run([sys.executable, __file__, "--sizes", str(size), "--json",
                              "/dev/stdout", "--kernel", args.kernel],
                             env={**os.environ, "SCALE_CHILD": "1"},
                             capture_output=True, text=True, check=True)
        rows.append(Row(**json.loads(out.stdout)["rows"][0]))
        print(f"  measured {size} devices", file=sys.stderr)
    header = ("devices", "make all s", "resync ms", "without kernel", "resync CPU ms", "calls",
              "mutations", "SQL", "start-up s", "start-up CPU s",
              "burst p50 ms", "burst p99 ms", "1 drop p50 ms", "peak RSS MB", "our heap MB")
    table = [header] + [tuple(str(v) for v in asdict(r).values()) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    if not os.environ.get("SCALE_CHILD"):
        print(f"fake kernel: {args.kernel}" + (" (peak RSS is the daemon's alone)"
                                              if args.kernel == "process" else
                                              " (peak RSS includes the fake kernel)"))
        for line in table:
            print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
        base = rows[0]
        for row in rows[1:]:
            factor = row.devices / base.devices
            print(f"{row.devices} vs {base.devices} devices ({factor:.0f}x): resync "
                  f"{row.resync_ms / base.resync_ms:.1f}x, start-up "
                  f"{row.startup_s / base.startup_s:.1f}x, RSS "
                  f"{row.peak_rss_mb / base.peak_rss_mb:.1f}x")
    document = {"machine": platform.platform(), "python": platform.python_version(),
                "cpus": os.cpu_count(), "kernel": args.kernel, "rows": [asdict(r) for r in rows]}
    if str(args.json) == "/dev/stdout":
        json.dump(document, sys.stdout)
    else:
        # The documented default is out/scale.json: a fresh checkout has no out/ yet.
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
