"""Capture real dmsetup/losetup/thin_* outputs into fixtures/dmsetup/*.json (run in the VM).

Usage (host): scripts/capture-fixtures. Each scenario starts from a clean kernel, runs a fixed
sequence of commands in the exact argv forms reconciler uses, and records argv, exit code,
stdout and stderr of each, so tests can replay the same argv on the fake kernel and compare
byte for byte. Only the standard library: this runs under whatever Python the guest has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORK = Path("/tmp/rc")
POOL = "rcpool"
INFO = ["info", "-c", "--noheadings", "--nameprefixes", "-o",
        "name,uuid,major,minor,attr,open,segments,events"]


class Recorder:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.holders: dict[str, subprocess.Popen[bytes]] = {}

    def cmd(self, argv: list[str], note: str = "") -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(argv, capture_output=True, text=True,
                              env={**os.environ, "LC_ALL": "C"}, check=False)
        self.steps.append({"kind": "cmd", "argv": argv, "rc": proc.returncode,
                           "stdout": proc.stdout, "stderr": proc.stderr, "note": note})
        return proc

    def dm(self, *words: str, note: str = "") -> subprocess.CompletedProcess[str]:
        return self.cmd(["dmsetup", *words], note)

    def file(self, path: Path, size: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            handle.truncate(size)
        self.steps.append({"kind": "file", "path": str(path), "size_bytes": size})

    def hold_open(self, device: str) -> None:
        with open(device, "rb") as handle:  # the child keeps its own copy of the descriptor
            self.holders[device] = subprocess.Popen(["sleep", "600"], stdin=handle)
        time.sleep(0.2)
        self.steps.append({"kind": "hold_open", "device": device})

    def release(self, device: str) -> None:
        holder = self.holders.pop(device)
        holder.kill()
        holder.wait()
        self.steps.append({"kind": "release", "device": device})

    def write(self, device: str, offset: int, length: int) -> None:
        fd = os.open(device, os.O_WRONLY)
        try:
            os.pwrite(fd, b"\xa5" * length, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.steps.append({"kind": "write", "device": device, "offset_bytes": offset,
                           "length_bytes": length})

    def remove(self, name: str) -> None:
        """Remove, recording a retry when udev still holds a device just made (EBUSY once)."""
        for _ in range(10):
            if self.dm("remove", name, note="remove").returncode == 0:
                return
            time.sleep(0.3)


def scenario_empty(rec: Recorder) -> None:
    rec.dm("ls", note="no devices")
    rec.dm("status", note="no devices")
    rec.dm("table", note="no devices")
    rec.dm(*INFO, note="no devices")
    for words in (["remove", "nosuch"], ["status", "nosuch"], ["table", "nosuch"],
                  [*INFO, "nosuch"], ["suspend", "nosuch"], ["resume", "nosuch"],
                  ["message", "nosuch", "0", "create_thin", "0"]):
        rec.dm(*words, note="missing device")


def _pool(rec: Recorder, data_size: int, features: list[str]) -> tuple[str, str]:
    meta, data = WORK / "meta", WORK / "data"
    rec.file(meta, 16 << 20)
    rec.file(data, data_size)
    meta_dev = rec.cmd(["losetup", "--find", "--show", str(meta)]).stdout.strip()
    data_dev = rec.cmd(["losetup", "--find", "--show", str(data)]).stdout.strip()
    table = f"0 {data_size // 512} thin-pool {meta_dev} {data_dev} 128 32768"
    if features:
        table += f" {len(features)} {' '.join(features)}"
    rec.dm("create", POOL, "--uuid", f"RECONCILER-v1-{POOL}-pool", "--table", table,
           note="create pool")
    return meta_dev, data_dev


def _unpool(rec: Recorder, meta_dev: str, data_dev: str) -> None:
    rec.remove(POOL)
    rec.cmd(["thin_check", meta_dev], note="thin_check on a clean metadata device")
    for dev in (meta_dev, data_dev):
        rec.cmd(["losetup", "--detach", dev])


def thin(rec: Recorder, name: str, thin_id: int, sectors: int, *extra: str) -> None:
    rec.dm("create", f"{POOL}-{name}", "--uuid", f"RECONCILER-v1-{POOL}-{thin_id}", "--table",
           f"0 {sectors} thin /dev/mapper/{POOL} {thin_id}", *extra, note=f"activate {name}")


def scenario_lifecycle(rec: Recorder) -> None:
    meta_dev, data_dev = _pool(rec, 512 << 20, [])
    rec.cmd(["losetup", "--noheadings", "--output", "NAME", "--associated", str(WORK / "meta")],
            note="attached")
    rec.cmd(["losetup", "--noheadings", "--output", "NAME", "--associated", "/tmp/rc/none"],
            note="not attached")
    rec.cmd(["stat", "-L", "-c", "%t:%T", meta_dev])
    rec.cmd(["blockdev", "--getsz", data_dev])
    rec.dm("table", POOL)
    rec.dm("status", POOL)
    rec.dm(*INFO, POOL)
    rec.dm("info", POOL, note="plain info, for reference")
    rec.dm("create", POOL, "--uuid", "other", "--table", "0 8 zero", note="name taken")
    rec.dm("message", POOL, "0", "create_thin", "0")
    rec.dm("message", POOL, "0", "create_thin", "0", note="id exists")
    rec.dm("message", POOL, "0", "set_transaction_id", "0", "1")
    rec.dm("message", POOL, "0", "set_transaction_id", "5", "6", note="wrong old id")
    rec.dm("message", POOL, "0", "create_thin", str(1 << 24), note="id beyond 24 bits")
    thin(rec, "base", 0, 2097152)
    rec.dm("status", f"{POOL}-base")
    rec.dm("table", f"{POOL}-base")
    rec.dm(*INFO, f"{POOL}-base")
    rec.dm("ls")
    rec.dm("status")
    rec.dm("table")
    rec.dm(*INFO)
    rec.write(f"/dev/mapper/{POOL}-base", 0, 65536)
    rec.write(f"/dev/mapper/{POOL}-base", 10 << 20, 1 << 20)
    rec.dm("status", f"{POOL}-base", note="after writes")
    rec.dm("status", POOL, note="after writes")
    rec.dm("suspend", f"{POOL}-base")
    rec.dm(*INFO, f"{POOL}-base", note="suspended")
    rec.dm("status", f"{POOL}-base", note="suspended")
    rec.dm("message", POOL, "0", "create_snap", "1", "0")
    rec.dm("message", POOL, "0", "set_transaction_id", "1", "2")
    rec.dm("resume", f"{POOL}-base")
    thin(rec, "snap", 1, 2097152, "--readonly")
    rec.dm(*INFO, f"{POOL}-snap", note="read-only")
    rec.dm("status")
    rec.dm("message", POOL, "0", "create_snap", "2", "99", note="origin missing")
    rec.dm("message", POOL, "0", "create_snap", "2", "0", note="origin active, not suspended")
    rec.dm("message", POOL, "0", "delete", "2")
    thin(rec, "ghost", 77, 2048)
    rec.dm("message", POOL, "0", "delete", "0", note="delete of an active thin")
    rec.hold_open(f"/dev/mapper/{POOL}-snap")
    rec.dm("remove", f"{POOL}-snap", note="held open")
    rec.release(f"/dev/mapper/{POOL}-snap")
    rec.remove(f"{POOL}-snap")
    rec.dm("suspend", f"{POOL}-base")
    rec.dm("load", f"{POOL}-base", "--table", f"0 4194304 thin /dev/mapper/{POOL} 0")
    rec.dm(*INFO, f"{POOL}-base", note="suspended with an inactive table")
    rec.dm("resume", f"{POOL}-base")
    rec.dm("table", f"{POOL}-base", note="grown")
    rec.dm("suspend", f"{POOL}-base")
    rec.dm("load", f"{POOL}-base", "--table", f"0 4194304 thin /dev/mapper/{POOL} 0",
           "--readonly")
    rec.dm("resume", f"{POOL}-base")
    rec.dm(*INFO, f"{POOL}-base", note="reloaded read-only")
    rec.dm("remove", POOL, note="pool with an active thin")
    rec.dm("message", POOL, "0", "reserve_metadata_snap")
    rec.dm("message", POOL, "0", "reserve_metadata_snap", note="already held")
    rec.dm("status", POOL, note="metadata snap held")
    rec.cmd(["thin_ls", "--metadata-snap", "--no-headers", "-o", "DEV", meta_dev])
    rec.cmd(["thin_ls", "--no-headers", "-o", "DEV", meta_dev], note="live, no snap")
    rec.dm("message", POOL, "0", "release_metadata_snap")
    rec.remove(f"{POOL}-base")
    rec.dm("message", POOL, "0", "delete", "0")
    rec.dm("message", POOL, "0", "delete", "1")
    rec.dm("message", POOL, "0", "delete", "1", note="already deleted")
    rec.dm("message", POOL, "0", "set_transaction_id", "2", "3")
    rec.dm("status", POOL)
    _unpool(rec, meta_dev, data_dev)
    rec.file(WORK / "zeros", 16 << 20)
    zeros = rec.cmd(["losetup", "--find", "--show", str(WORK / "zeros")]).stdout.strip()
    rec.cmd(["thin_check", zeros], note="no thin superblock")
    rec.cmd(["losetup", "--detach", zeros])


def scenario_full(rec: Recorder) -> None:
    meta_dev, data_dev = _pool(rec, 2 << 20, ["error_if_no_space"])
    rec.dm("message", POOL, "0", "create_thin", "0")
    thin(rec, "big", 0, 131072)
    rec.cmd(["dd", "if=/dev/zero", f"of=/dev/mapper/{POOL}-big", "bs=1M", "count=4",
             "oflag=direct", "status=none"], note="write past the pool's end")
    rec.dm("status", POOL, note="full")
    rec.dm("status", f"{POOL}-big", note="full")
    rec.dm("message", POOL, "0", "create_thin", "1", note="metadata op on a full pool")
    rec.remove(f"{POOL}-big")
    _unpool(rec, meta_dev, data_dev)


def main() -> None:
    out = Path(sys.argv[1])
    subprocess.run(["modprobe", "-a", "dm-thin-pool", "loop"], check=True)
    version = subprocess.run(["dmsetup", "version"], capture_output=True, text=True).stdout
    for name, body in (("empty", scenario_empty), ("lifecycle", scenario_lifecycle),
                       ("full", scenario_full)):
        rec = Recorder()
        body(rec)
        document = {"kernel": os.uname().release, "dmsetup_version": version,
                    "steps": rec.steps}
        (out / f"{name}.json").write_text(json.dumps(document, indent=1) + "\n")
        print(f"{name}: {len(rec.steps)} steps")


if __name__ == "__main__":
    main()
