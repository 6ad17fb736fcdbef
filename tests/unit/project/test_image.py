"""The image file (deploy/Containerfile) and what it installs: its commands linted (hadolint,
which runs shellcheck on every RUN), the programs the daemon runs, and the Python packages
from the locks (scripts/lock) with every file's hash, covering what pyproject.toml asks."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.unit.project.manifests import ROOT

CONTAINERFILE = ROOT / "deploy" / "Containerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
RUNTIME_LOCK = ROOT / "deploy" / "requirements.lock"
BUILD_LOCK = ROOT / "deploy" / "build-requirements.lock"
# A requirement of pyproject.toml: `name>=X.Y[.Z]`, optionally `,<N`.
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)>=([0-9.]+)")


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True,
                          text=True, check=False)


def test_the_image_file_passes_hadolint() -> None:
    """Every rule, shellcheck's on each RUN included; an ignored rule says why in the file."""
    result = _hadolint(CONTAINERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = CONTAINERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], \
                f"line {i + 1}: an ignored rule needs its reason on the line above"


def test_hadolint_finds_what_is_wrong(tmp_path: Path) -> None:
    """The lint above can fail: an unpinned base image, a bare `cd` and an unpinned pip
    install are reported."""
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM debian:latest\nRUN cd /src && make\n"
                   "RUN pip install --no-cache-dir grpcio\n")
    result = _hadolint(bad)
    assert result.returncode == 1
    assert {"DL3007", "DL3003", "DL3013"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_the_image_has_the_programs_the_daemon_runs() -> None:
    """The runtime stage installs the packages of every program reconciler runs."""
    runtime_stage = CONTAINERFILE.read_text().rsplit("\nFROM ", 1)[1]
    for package in ("libdevmapper1.02.1", "dmsetup", "thin-provisioning-tools", "e2fsprogs",
                    "xfsprogs", "util-linux", "mount", "python3"):
        assert f" {package}" in runtime_stage, package


def _pins(lock: Path) -> dict[str, tuple[str, int]]:
    """A lock's packages: normalized name -> (version, how many hashes it lists)."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in lock.read_text().splitlines():
        pinned = re.match(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", line)
        if pinned:
            name = _normalized(pinned.group(1))
            pins[name] = (pinned.group(2), 0)
        elif line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
        else:
            assert not line.strip() or line.startswith("#"), f"{lock.name}: {line!r}"
    return pins


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _release(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version ("1.66.2" -> (1, 66, 2)), zeros trimmed."""
    release = re.match(r"[0-9]+(?:\.[0-9]+)*", version)
    assert release is not None, version
    parts = [int(part) for part in release.group(0).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _floors(requirements: list[str]) -> dict[str, tuple[int, ...]]:
    found = {}
    for line in requirements:
        match = REQUIREMENT.match(line.replace(" ", ""))
        assert match is not None, f"{line!r} is not name>=floor"
        found[_normalized(match.group(1))] = _release(match.group(2))
    return found


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize(("lock", "requirements"), [
    (RUNTIME_LOCK, PYPROJECT["project"]["dependencies"]),
    (BUILD_LOCK, PYPROJECT["build-system"]["requires"]),
], ids=["runtime", "build"])
def test_each_lock_pins_what_pyproject_asks_with_hashes(lock: Path,
                                                        requirements: list[str]) -> None:
    """Every requirement of pyproject.toml (the runtime's, the build's) is pinned in its lock
    at a version its floor admits, and every pinned package lists the hashes of its files
    (pip's --require-hashes refuses the lock otherwise): after a dependency changes,
    scripts/lock must run."""
    pins = _pins(lock)
    floors = _floors(requirements)
    assert floors.keys() <= pins.keys(), f"not in {lock.name}: {floors.keys() - pins.keys()}"
    for name, floor in floors.items():
        assert _release(pins[name][0]) >= floor, f"{name} {pins[name][0]} is below {floor}"
    assert all(hashes > 0 for _, hashes in pins.values()), pins


def test_the_runtime_lock_holds_no_development_tool() -> None:
    """The image gets the runtime's closure only: nothing of the dev extra that the runtime
    does not itself need."""
    runtime = _floors(PYPROJECT["project"]["dependencies"])
    dev_only = _floors(PYPROJECT["project"]["optional-dependencies"]["dev"]).keys() - runtime
    assert not dev_only & _pins(RUNTIME_LOCK).keys()


def test_the_image_installs_from_the_locks_only() -> None:
    """Both venvs of the build stage install with --require-hashes from a lock, and the
    package itself is installed without its dependencies (already the lock's) and without an
    index: no pip command of the file can fetch a file the lock did not name."""
    lines = [line for line in CONTAINERFILE.read_text().splitlines()
             if not line.lstrip().startswith("#")]
    text = " ".join(" ".join(lines).replace("\\", " ").split())
    installs = [command.strip() for run in re.findall(r"RUN (.*?)(?= [A-Z]+ |$)", text)
                for command in run.split("&&") if "/bin/pip " in command]
    assert len(installs) == 4, installs
    for command in installs:
        locked = f"--require-hashes -r deploy/{BUILD_LOCK.name}" in command \
            or f"--require-hashes -r deploy/{RUNTIME_LOCK.name}" in command
        assert locked or ("--no-deps" in command and ("--no-index" in command
                                                      or "--no-build-isolation" in command)), \
            command
    assert f"COPY deploy/{RUNTIME_LOCK.name} deploy/{BUILD_LOCK.name} ./deploy/" in text
