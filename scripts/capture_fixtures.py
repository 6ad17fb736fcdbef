"""Capture real dmsetup/losetup/thin_* outputs into fixtures/dmsetup/*.json (runs in the VM).

Usage (host): scripts/capture-fixtures, which boots one fresh VM and runs
    python scripts/capture_fixtures.py OUTDIR
in it. Each scenario starts from a clean kernel (no dm devices, no loop devices, no /tmp/rc),
runs a fixed sequence of commands in the exact argv forms reconciler uses, and records argv,
exit code, stdout and stderr of each, so tests can replay the same argv on the fake kernel and
compare byte for byte. Every scenario is run twice in the same VM; the first run is written,
the second only checks that the scenario is deterministic (differences are reported and the
second run is kept as NAME.second-run.json). RECONCILER_CAPTURE_ONCE=1 plays each only once.

Only the standard library: this runs under whichever Python the guest is given.

Besides the recorded commands the driver itself does a few things that are not steps: it
creates and empties /tmp/rc, waits for a device to be blocked in a queued write, sets
dm_thin_pool's no_space_timeout module parameter (full scenario, noted on its steps), and
checks that each scenario leaves no dm or loop device behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

WORK = Path("/tmp/rc")
META, DATA = WORK / "meta", WORK / "data"
META_DEV, DATA_DEV = "/dev/loop0", "/dev/loop1"
POOL = "rcpool"
POOL_UUID = f"RECONCILER-v1-{POOL}-pool"
INFO = ["info", "-c", "--noheadings", "--nameprefixes", "-o",
        "name,uuid,major,minor,attr,open,segments,events"]
THIN_LS_FIELDS = "DEV,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES"
NO_SPACE_TIMEOUT = Path("/sys/module/dm_thin_pool/parameters/no_space_timeout")
ENV = {**os.environ, "LC_ALL": "C", "LANG": "C"}
OK, FAIL, ANY = "ok", "fail", "any"
MiB = 1 << 20
# RECONCILER_CAPTURE_ONCE=1: play each scenario once (faster; no determinism check).
ONCE = os.environ.get("RECONCILER_CAPTURE_ONCE") == "1"


def decode(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


class Recorder:
    """The steps of one scenario, and what did not go as planned."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.steps: list[dict[str, Any]] = []
        self.surprises: list[str] = []
        self.side: list[dict[str, Any]] = []
        self.holders: dict[str, subprocess.Popen[bytes]] = {}

    def surprise(self, text: str) -> None:
        self.surprises.append(f"{self.scenario} step {len(self.steps) - 1}: {text}")

    def cmd(self, argv: Sequence[str], note: str, expect: str = OK,
            timeout: float | None = None) -> dict[str, Any]:
        """Run argv, record it; expect OK (rc 0), FAIL (rc != 0) or ANY."""
        proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                              env=ENV, check=False, timeout=timeout)
        step = {"kind": "cmd", "argv": list(argv), "rc": proc.returncode,
                "stdout": decode(proc.stdout), "stderr": decode(proc.stderr), "note": note}
        self.steps.append(step)
        if (expect == OK and proc.returncode != 0) or (expect == FAIL and proc.returncode == 0):
            self.surprise(f"{' '.join(argv)}: expected {expect}, got rc {proc.returncode} "
                          f"{step['stderr']!r}")
        return step

    def dm(self, *words: str, note: str, expect: str = OK) -> dict[str, Any]:
        return self.cmd(["dmsetup", *words], note, expect)

    def info(self, name: str | None, note: str, expect: str = OK) -> dict[str, Any]:
        return self.dm(*INFO, *([name] if name else []), note=note, expect=expect)

    def create(self, name: str, uuid: str, table: str, note: str, readonly: bool = False,
               expect: str = OK) -> dict[str, Any]:
        extra = ["--readonly"] if readonly else []
        return self.dm("create", name, "--uuid", uuid, "--table", table, *extra, note=note,
                       expect=expect)

    def thin(self, name: str, thin_id: int, sectors: int, note: str, readonly: bool = False,
             expect: str = OK) -> dict[str, Any]:
        return self.create(f"{POOL}-{name}", f"RECONCILER-v1-{POOL}-{thin_id}",
                           f"0 {sectors} thin /dev/mapper/{POOL} {thin_id}", note, readonly,
                           expect)

    def msg(self, *words: str, note: str, expect: str = OK) -> dict[str, Any]:
        return self.dm("message", POOL, "0", *words, note=note, expect=expect)

    def remove(self, name: str, note: str, attempts: int = 10) -> None:
        """Remove; a device made a moment ago may still be open in udev (EBUSY): each attempt
        is recorded, with a note saying which one it was."""
        for attempt in range(1, attempts + 1):
            label = note if attempt == 1 else f"{note} (retry {attempt}: udev had it open)"
            step = self.dm("remove", name, note=label, expect=ANY)
            if step["rc"] == 0:
                return
            if "Device or resource busy" not in step["stderr"]:
                break
            time.sleep(0.5)
        self.surprise(f"remove {name} kept failing")

    def hold_open(self, device: str) -> None:
        """A background process keeps the device open until release()."""
        with open(device, "rb") as handle:  # the child keeps its own copy of the descriptor
            self.holders[device] = subprocess.Popen(["sleep", "3600"], stdin=handle)
        time.sleep(0.2)
        self.steps.append({"kind": "hold_open", "device": device})

    def release(self, device: str) -> None:
        holder = self.holders.pop(device)
        holder.kill()
        holder.wait()
        self.steps.append({"kind": "release", "device": device})

    def write(self, device: str, offset: int, length: int) -> None:
        """Non-zero data, O_DIRECT, fsync'd: dd, as the step says."""
        proc = subprocess.run(
            ["dd", f"of={device}", "bs=65536", f"seek={offset}", "iflag=fullblock",
             "oflag=direct,seek_bytes", "conv=fsync,notrunc", "status=none"],
            input=b"\xa5" * length, capture_output=True, env=ENV, check=False)
        self.steps.append({"kind": "write", "device": device, "offset_bytes": offset,
                           "length_bytes": length})
        if proc.returncode != 0:
            self.surprise(f"write {device} {offset}+{length} failed: {decode(proc.stderr)!r}")

    def sparse_files(self, meta_bytes: int, data_bytes: int) -> None:
        """The pool's two backing files (sparse), metadata superblock zeroed."""
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir(parents=True)
        self.cmd(["truncate", "-s", str(meta_bytes), str(META)],
                 f"sparse metadata file of {meta_bytes} bytes ({meta_bytes // MiB} MiB)")
        self.cmd(["truncate", "-s", str(data_bytes), str(DATA)],
                 f"sparse data file of {data_bytes} bytes ({data_bytes // MiB} MiB, "
                 f"{data_bytes // 512} sectors, {data_bytes // 65536} blocks of 64 KiB)")
        self.cmd(["dd", "if=/dev/zero", f"of={META}", "bs=4096", "count=1", "conv=notrunc",
                  "status=none"], "zero the first 4096 bytes of the metadata: a new pool")

    def attach(self) -> None:
        """Metadata first, data second: /dev/loop0 and /dev/loop1 (checked)."""
        for path, want in ((META, META_DEV), (DATA, DATA_DEV)):
            step = self.cmd(["losetup", "--find", "--show", str(path)],
                            f"attach {path.name}: expected {want}")
            if step["stdout"] != want + "\n":
                raise RuntimeError(f"losetup gave {step['stdout']!r}, not {want}: not a clean VM")

    def detach(self) -> None:
        for dev in (META_DEV, DATA_DEV):
            self.cmd(["losetup", "--detach", dev], f"detach {dev}")

    def pool_status(self, note: str) -> dict[str, Any]:
        return self.dm("status", POOL, note=note)


def pool_table(data_bytes: int, features: Sequence[str] = (), block_sectors: int = 128) -> str:
    table = f"0 {data_bytes // 512} thin-pool {META_DEV} {DATA_DEV} {block_sectors} 32768"
    if features:
        table += f" {len(features)} {' '.join(features)}"
    return table


def thin_ls(rec: Recorder, note: str) -> None:
    """thin_ls on the reserved metadata snapshot; other spellings only if this one fails."""
    forms = [
        ["thin_ls", "--metadata-snap", "-o", THIN_LS_FIELDS, META_DEV],
        ["thin_ls", "--metadata-snap", "--format", THIN_LS_FIELDS, META_DEV],
        ["thin_ls", "--metadata-snap", "--no-headers", "-o", THIN_LS_FIELDS, META_DEV],
        ["thin_ls", "-m", "-o", THIN_LS_FIELDS, META_DEV],
    ]
    for i, argv in enumerate(forms):
        step = rec.cmd(argv, note if i == 0 else f"{note} (alternative spelling {i})",
                       expect=OK if i == len(forms) - 1 else ANY)
        if step["rc"] == 0:
            return


def ensure_clean(where: str) -> None:
    """No dm device and no loop device (checked, not recorded)."""
    ls = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True, env=ENV)
    loops = subprocess.run(["losetup", "--noheadings", "--list"], capture_output=True,
                           text=True, env=ENV)
    if ls.stdout != "No devices found\n" or loops.stdout.strip():
        raise RuntimeError(f"{where}: not clean: dmsetup ls {ls.stdout!r} losetup "
                           f"{loops.stdout!r}")


def cleanup_anything() -> None:
    """After a crashed scenario: remove every dm device and loop device, whatever they are."""
    for _ in range(5):
        subprocess.run(["dmsetup", "remove_all", "--force"], capture_output=True)
        subprocess.run(["losetup", "--detach-all"], capture_output=True)
        time.sleep(0.5)
    shutil.rmtree(WORK, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Scenarios


def scenario_empty(rec: Recorder) -> None:
    rec.dm("version", note="library and driver versions")
    rec.dm("ls", note="no dm devices")
    rec.dm("status", note="no dm devices")
    rec.dm("table", note="no dm devices")
    rec.info(None, note="no dm devices")
    rec.dm("info", "nosuch", note="plain info of a missing device", expect=FAIL)
    missing = [
        ["remove", "nosuch"], ["status", "nosuch"], ["table", "nosuch"], [*INFO, "nosuch"],
        ["suspend", "nosuch"], ["resume", "nosuch"], ["load", "nosuch", "--table", "0 8 zero"],
        ["message", "nosuch", "0", "create_thin", "0"],
    ]
    for words in missing:
        rec.dm(*words, note=f"{words[0]} of a missing device", expect=FAIL)


def scenario_lifecycle(rec: Recorder) -> None:
    data_bytes = 512 * MiB
    rec.sparse_files(16 * MiB, data_bytes)
    assoc = ["losetup", "--noheadings", "--output", "NAME", "--associated", str(META)]
    rec.cmd(assoc, "metadata file not attached yet: empty output")
    rec.attach()
    rec.cmd(assoc, "metadata file attached")
    table = pool_table(data_bytes)
    rec.create(POOL, POOL_UUID, table, "create the pool on fresh metadata")
    rec.dm("table", POOL, note="the pool's table as the kernel prints it back (major:minor)")
    rec.pool_status("new pool: transaction id 0, nothing mapped")
    rec.info(POOL, "pool info")
    rec.dm("info", POOL, note="plain info, for reference")
    rec.create(POOL, POOL_UUID, table, "create the pool again: the name is taken", expect=FAIL)

    rec.msg("create_thin", "0", note="new thin id 0")
    rec.msg("create_thin", "0", note="thin id 0 exists already", expect=FAIL)
    rec.msg("create_thin", str(1 << 24), note="thin id beyond 24 bits", expect=FAIL)
    rec.msg("set_transaction_id", "0", "1", note="transaction id 0 -> 1")
    rec.msg("set_transaction_id", "5", "6", note="old transaction id is not the current one",
            expect=FAIL)
    rec.pool_status("transaction id 1, one thin")

    rec.thin("base", 0, 2097152, "activate thin 0 as rcpool-base (1 GiB)")
    rec.dm("status", f"{POOL}-base", note="thin status: nothing mapped")
    rec.dm("table", f"{POOL}-base", note="thin table (pool as major:minor)")
    rec.info(f"{POOL}-base", "thin info")
    rec.dm("ls", note="pool and one thin")
    rec.dm("status", note="all devices")
    rec.dm("table", note="all devices")
    rec.info(None, "all devices")

    rec.write(f"/dev/mapper/{POOL}-base", 0, 65536)
    rec.write(f"/dev/mapper/{POOL}-base", 10 * MiB, MiB)
    rec.dm("status", f"{POOL}-base", note="after 64 KiB + 1 MiB written: 17 blocks mapped")
    rec.pool_status("after the writes: 17 data blocks used")

    rec.dm("suspend", f"{POOL}-base", note="suspend the origin before snapshotting it")
    rec.info(f"{POOL}-base", "suspended (attr s)")
    rec.dm("status", f"{POOL}-base", note="status of a suspended thin")
    rec.msg("create_snap", "1", "0", note="snapshot id 1 of thin 0 (origin suspended)")
    rec.dm("resume", f"{POOL}-base", note="resume the origin")
    rec.msg("set_transaction_id", "1", "2", note="transaction id 1 -> 2")
    rec.thin("snap", 1, 2097152, "activate the snapshot read-only", readonly=True)
    rec.info(f"{POOL}-snap", "read-only snapshot (attr r)")
    rec.dm("table", f"{POOL}-snap", note="table of a read-only device")
    rec.dm("status", f"{POOL}-snap", note="snapshot shares the origin's 17 blocks")
    rec.dm("status", f"{POOL}-base", note="origin after the snapshot")
    rec.pool_status("pool with an origin and a snapshot: still 17 blocks used")

    rec.msg("create_snap", "2", "99", note="snapshot of a thin id that does not exist",
            expect=FAIL)
    rec.msg("create_snap", "2", "0", note="snapshot of an active origin that is NOT suspended",
            expect=ANY)
    rec.msg("delete", "2", note="drop that snapshot again", expect=ANY)
    rec.thin("missing", 77, 2097152, "activate a thin id that is not in the pool", expect=FAIL)
    rec.dm("ls", note="the failed create left no device behind")
    rec.msg("delete", "0", note="delete thin 0 while rcpool-base is active", expect=ANY)
    rec.pool_status("after the delete attempt")

    rec.hold_open(f"/dev/mapper/{POOL}-snap")
    rec.info(f"{POOL}-snap", "held open (open count 1)")
    rec.dm("remove", f"{POOL}-snap", note="remove while something holds it open", expect=FAIL)
    rec.release(f"/dev/mapper/{POOL}-snap")
    rec.remove(f"{POOL}-snap", "remove once released")

    rec.dm("suspend", f"{POOL}-base", note="grow: suspend")
    grown = f"0 4194304 thin /dev/mapper/{POOL} 0"
    rec.dm("load", f"{POOL}-base", "--table", grown, note="grow: load 2 GiB table")
    rec.info(f"{POOL}-base", "suspended with an inactive table loaded (attr i)")
    rec.dm("resume", f"{POOL}-base", note="grow: resume swaps the table in")
    rec.dm("table", f"{POOL}-base", note="grown to 4194304 sectors")
    rec.dm("status", f"{POOL}-base", note="grown: mapped sectors unchanged")
    rec.remove(f"{POOL}-base", "remove the origin (created long ago)")

    rec.thin("snap", 1, 2097152, "activate the snapshot again, to keep the pool busy",
             readonly=True)
    rec.dm("remove", POOL, note="remove the pool while a thin on it is active", expect=FAIL)
    rec.remove(f"{POOL}-snap", "remove a thin right after creating it")

    rec.pool_status("no thin active")
    rec.msg("reserve_metadata_snap", note="hold a metadata snapshot")
    rec.msg("reserve_metadata_snap", note="a second one while one is held", expect=FAIL)
    rec.pool_status("metadata snapshot held: its block number in the held-root field")
    thin_ls(rec, "thin_ls on the held metadata snapshot: thins 0 and 1 sharing blocks")
    rec.cmd(["thin_ls", "-o", THIN_LS_FIELDS, META_DEV],
            "thin_ls of the live pool's metadata without --metadata-snap", expect=FAIL)
    rec.msg("release_metadata_snap", note="release the metadata snapshot")
    rec.msg("release_metadata_snap", note="release when none is held", expect=FAIL)
    rec.pool_status("snapshot released")

    rec.msg("delete", "1", note="delete the snapshot")
    rec.pool_status("after delete 1")
    rec.msg("delete", "0", note="delete the origin")
    rec.pool_status("after delete 0: no data block used")
    rec.msg("delete", "0", note="delete an id that is gone", expect=FAIL)
    rec.msg("set_transaction_id", "2", "3", note="transaction id 2 -> 3")
    rec.pool_status("transaction id 3, empty")
    rec.msg("reserve_metadata_snap", note="hold a metadata snapshot of the empty pool")
    thin_ls(rec, "thin_ls of an empty pool: headers only")
    rec.msg("release_metadata_snap", note="release it")
    rec.pool_status("final state of the pool")

    rec.remove(POOL, "remove the pool")
    rec.dm("ls", note="nothing left")
    rec.cmd(["thin_check", META_DEV], "thin_check of good metadata, pool removed")
    rec.cmd(["dd", "if=/dev/zero", f"of={META_DEV}", "bs=4096", "count=1", "oflag=direct",
             "conv=fsync", "status=none"], "zero the metadata superblock")
    rec.cmd(["thin_check", META_DEV], "thin_check of a zeroed superblock", expect=FAIL)
    rec.detach()
    rec.cmd(assoc, "detached: empty output")


def scenario_full(rec: Recorder) -> None:
    data_bytes = 2 * MiB
    rec.sparse_files(16 * MiB, data_bytes)
    rec.attach()
    big = f"{POOL}-big"
    dev = f"/dev/mapper/{big}"
    rec.create(POOL, POOL_UUID, pool_table(data_bytes, ["error_if_no_space"]),
               "a 32-block pool that errors when full")
    rec.dm("table", POOL, note="features: 1 error_if_no_space")
    rec.pool_status("empty error_if_no_space pool")
    rec.msg("create_thin", "0", note="thin 0")
    rec.thin("big", 0, 131072, "64 MiB thin on the 2 MiB pool")
    rec.cmd(["dd", "if=/dev/zero", f"of={dev}", "bs=1M", "count=4", "oflag=direct",
             "conv=fsync", "status=none"],
            "write 4 MiB into the 2 MiB pool: the third MiB fails", expect=FAIL)
    rec.pool_status("full: out_of_data_space")
    rec.dm("status", big, note="thin on the full pool")
    rec.info(POOL, "pool info after running out of space (events)")
    rec.msg("create_thin", "1", note="create_thin on a pool out of data space", expect=ANY)
    rec.remove(big, "remove the thin")
    rec.msg("delete", "0", note="delete thin 0: frees the data blocks")
    rec.msg("delete", "1", note="delete thin 1 (if it was made)", expect=ANY)
    rec.pool_status("after the deletes")
    rec.remove(POOL, "remove the pool")
    rec.detach()

    # The same, queueing when full (the default: no feature arguments).
    original_timeout = NO_SPACE_TIMEOUT.read_text().strip()
    rec.sparse_files(16 * MiB, data_bytes)
    rec.attach()
    rec.create(POOL, POOL_UUID, pool_table(data_bytes), "the same pool, queue_if_no_space")
    rec.dm("table", POOL, note="no feature arguments")
    rec.pool_status("empty pool: queue_if_no_space")
    rec.msg("create_thin", "0", note="thin 0")
    rec.thin("big", 0, 131072, "64 MiB thin")
    rec.cmd(["dd", "if=/dev/zero", f"of={dev}", "bs=1M", "count=2", "oflag=direct",
             "conv=fsync", "status=none"], "fill the pool exactly (32 blocks)")
    rec.pool_status("exactly full, nothing failed yet")
    NO_SPACE_TIMEOUT.write_text("5\n")
    argv = ["timeout", "20", "dd", "if=/dev/zero", f"of={dev}", "bs=1M", "count=1", "seek=2",
            "oflag=direct", "conv=fsync", "status=none"]
    # The write queues; while it is blocked, look at the pool (outside the replayable steps).
    during: list[dict[str, Any]] = []

    def watch() -> None:
        time.sleep(1)  # dd is running by then
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            proc = subprocess.run(["dmsetup", "status", POOL], capture_output=True, env=ENV)
            if b"out_of_data_space" in proc.stdout:
                during.append({"argv": ["dmsetup", "status", POOL], "rc": proc.returncode,
                               "stdout": decode(proc.stdout), "stderr": decode(proc.stderr),
                               "during": "while the write was queued, before the "
                                         "no_space_timeout expired"})
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    started = time.monotonic()
    watcher.start()
    rec.cmd(argv, "write past the end of a queue_if_no_space pool: it queues until "
            "dm_thin_pool's no_space_timeout, set to 5 s for this capture (default 60), "
            "then fails", expect=FAIL, timeout=120)
    watcher.join()
    waited = time.monotonic() - started
    rec.side.extend(during)
    if not during:
        rec.surprise("no out_of_data_space status seen while the write was queued")
    rec.side.append({"what": "seconds the queued write took before failing",
                     "seconds": round(waited, 1)})
    NO_SPACE_TIMEOUT.write_text(original_timeout + "\n")
    rec.pool_status("after no_space_timeout expired")
    rec.msg("create_thin", "1", note="create_thin on the full pool", expect=ANY)
    rec.remove(big, "remove the thin")
    rec.msg("delete", "0", note="delete thin 0")
    rec.msg("delete", "1", note="delete thin 1 (if it was made)", expect=ANY)
    rec.pool_status("after the deletes")
    rec.remove(POOL, "remove the pool")
    rec.detach()


def scenario_reactivate(rec: Recorder) -> None:
    data_bytes = 512 * MiB
    rec.sparse_files(16 * MiB, data_bytes)
    rec.attach()
    table = pool_table(data_bytes)
    rec.create(POOL, POOL_UUID, table, "new pool")
    rec.msg("create_thin", "0", note="thin 0")
    rec.msg("set_transaction_id", "0", "1", note="transaction id 0 -> 1")
    rec.pool_status("transaction id 1")
    rec.remove(POOL, "remove the pool, no thin active")
    rec.detach()
    rec.attach()
    rec.create(POOL, POOL_UUID, pool_table(data_bytes, block_sectors=256),
               "reactivate with a different block size than the metadata's", expect=FAIL)
    rec.dm("ls", note="the failed create left no device behind")
    rec.create(POOL, POOL_UUID, table, "reactivate with the same table")
    rec.pool_status("transaction id 1 persisted")
    rec.msg("create_thin", "0", note="thin 0 persisted: exists", expect=FAIL)
    rec.thin("base", 0, 2097152, "activate thin 0 again")
    rec.dm("status", f"{POOL}-base", note="thin 0 active")
    rec.remove(f"{POOL}-base", "remove the thin")
    rec.msg("reserve_metadata_snap", note="hold a metadata snapshot")
    thin_ls(rec, "thin_ls lists thin 0")
    rec.msg("release_metadata_snap", note="release it")
    rec.msg("delete", "0", note="delete thin 0")
    rec.msg("set_transaction_id", "1", "2", note="transaction id 1 -> 2")
    rec.pool_status("empty again")
    rec.remove(POOL, "remove the pool")
    rec.detach()


SCENARIOS: list[tuple[str, Callable[[Recorder], None]]] = [
    ("empty", scenario_empty),
    ("lifecycle", scenario_lifecycle),
    ("full", scenario_full),
    ("reactivate", scenario_reactivate),
]


def run(name: str, body: Callable[[Recorder], None]) -> Recorder:
    ensure_clean(f"before {name}")
    rec = Recorder(name)
    try:
        body(rec)
    finally:
        for device in list(rec.holders):
            rec.release(device)
    shutil.rmtree(WORK, ignore_errors=True)
    ensure_clean(f"after {name}")
    return rec


def comparable(steps: list[dict[str, Any]]) -> list[Any]:
    return [{k: v for k, v in step.items() if k != "note"} for step in steps]


def main() -> int:
    out = Path(sys.argv[1])
    began = time.monotonic()
    version = subprocess.run(["dmsetup", "version"], capture_output=True, env=ENV, check=True)
    kernel = os.uname().release
    failed = False
    report: list[str] = []
    for name, body in SCENARIOS:
        t0 = time.monotonic()
        try:
            first = run(name, body)
            second = first if ONCE else run(name, body)
        except Exception as exc:  # noqa: BLE001 - report, clean up, go on with the others
            failed = True
            report.append(f"{name}: FAILED: {exc!r}")
            cleanup_anything()
            continue
        document = {"kernel": kernel, "dmsetup_version": decode(version.stdout),
                    "steps": first.steps}
        if first.side:
            document["side_observations"] = first.side
        (out / f"{name}.json").write_text(json.dumps(document, indent=1, ensure_ascii=False)
                                          + "\n")
        report.append(f"{name}: {len(first.steps)} steps, {time.monotonic() - t0:.1f} s "
                      f"(two runs)")
        report += [f"  surprise: {s}" for s in first.surprises]
        a, b = comparable(first.steps), comparable(second.steps)
        if ONCE:
            report.append("  played once (RECONCILER_CAPTURE_ONCE=1): determinism not checked")
        elif a == b:
            report.append("  deterministic: the second run recorded identical steps")
        else:
            report.append("  NOT deterministic: the second run differs:")
            for index in range(max(len(a), len(b))):
                x = a[index] if index < len(a) else None
                y = b[index] if index < len(b) else None
                if x != y:
                    report.append(f"    step {index}: first {json.dumps(x)}")
                    report.append(f"    step {index}: second {json.dumps(y)}")
            (out / f"{name}.second-run.json").write_text(
                json.dumps({"steps": second.steps}, indent=1) + "\n")
    report.append(f"total in the guest: {time.monotonic() - began:.1f} s")
    text = "\n".join(report) + "\n"
    (out / "capture-report.txt").write_text(text)
    print(text, end="")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
