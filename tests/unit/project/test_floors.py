"""Installable on every version it claims: the commands that never serve gRPC import neither
grpc nor protobuf, `--version` answers from the package's metadata, the committed gRPC stubs
ask no more of grpcio and protobuf than pyproject.toml's floors, and constraints/minimum.txt
pins exactly those floors (scripts/floors installs it and runs the unit tier there)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

import reconciler.api.proto
from reconciler.cli import main
from reconciler.testing.config_file import write_config

ROOT = Path(__file__).resolve().parents[3]
# The package's own copy (the installed one, when scripts/floors tests a wheel).
PROTO_DIR = Path(reconciler.api.proto.__file__).parent
PACKAGE_ROOT = PROTO_DIR.parents[2]
CONSTRAINTS = ROOT / "constraints" / "minimum.txt"

# Runs in a fresh interpreter, so that nothing this test process imported counts: calls
# reconciler.cli.main (or starts a Daemon) on the fake kernel and prints, as JSON, its exit
# code and the loaded modules that belong to grpc or protobuf (or to our gRPC API package).
PROBE = """
import json, sys
from pathlib import Path
from reconciler.testing.fakekernel import FakeKernel

config, argv = Path(sys.argv[1]), sys.argv[2:]
if argv == ["daemon-start"]:
    from reconciler.config import load_settings
    from reconciler.daemon.service import Daemon
    daemon = Daemon(load_settings(config), FakeKernel(), config_path=config)
    daemon.start()
    daemon.close()
    code = 0
else:
    from reconciler.cli import main
    try:
        code = main(["-c", str(config), *argv], host=FakeKernel())
    except SystemExit as exc:
        code = exc.code
loaded = sorted(m for m in sys.modules
                if m.split(".")[0] == "grpc" or m.startswith(("google.protobuf", "reconciler.api")))
ours = sorted(m for m in sys.modules if m.startswith("reconciler."))
print(json.dumps({"code": code, "loaded": loaded, "ours": ours}))
"""


def floor_config(tmp_path: Path, grpc: bool = False) -> Path:
    """A loopback config under tmp_path (with a gRPC socket when `grpc`)."""
    extra = {"grpc_socket": tmp_path / "snap.sock"} if grpc else {}
    path = write_config(tmp_path / "config.toml", root_path=tmp_path / "state",
                        pool_name="floorpool", loopback_data_size="256MiB",
                        loopback_metadata_size="8MiB", base_image_size="64MiB",
                        spec_dir="specs", **extra)
    (tmp_path / "specs").mkdir(exist_ok=True)
    return path


def probe(config: Path, *argv: str) -> dict[str, object]:
    """Run PROBE with `argv`; its exit code and the gRPC/protobuf modules it loaded."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(config), *argv],
                          capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize(("argv", "code"), [
    (["--version"], 0),
    (["status", "--help"], 0),
    (["run", "--help"], 0),
    (["run", "--once"], 0),
    (["plan"], 0),
    (["status"], 0),
    (["status", "--check"], 2),  # no daemon runs: down
    (["daemon-start"], 0),
])
def test_commands_without_a_grpc_socket_import_neither_grpc_nor_protobuf(
        tmp_path: Path, argv: list[str], code: int) -> None:
    """Every command, and the daemon itself without grpc_socket, runs without loading grpc,
    protobuf or our API package (so a broken or missing gRPC stack cannot stop them)."""
    config = floor_config(tmp_path)
    if argv[0] in ("status", "plan") and "--help" not in argv:
        probe(config, "run", "--once")  # a state to show
    result = probe(config, *argv)
    assert (result["code"], result["loaded"]) == (code, [])


# What `run --once` leaves unloaded: the crash matrix and the kernel tests start it again and
# again, and under emulation each of these modules' import costs a process tenths of seconds.
NOT_FOR_RUN_ONCE = ("reconciler.status", "reconciler.daemon.control",
                    "reconciler.containerd_config")


def test_run_once_loads_neither_status_nor_the_control_client(tmp_path: Path) -> None:
    """`run --once` converges without importing the status document, the control socket's
    client or containerd's drop-in; `status` and `containerd-config` load theirs (the probe
    sees them when they are used)."""
    config = floor_config(tmp_path)
    once = probe(config, "run", "--once")
    assert once["code"] == 0
    ours = once["ours"]
    assert isinstance(ours, list) and "reconciler.reconcile.reconciler" in ours
    assert [m for m in ours if m.startswith(NOT_FOR_RUN_ONCE)] == []
    status = probe(config, "status")
    assert isinstance(status["ours"], list) and "reconciler.status" in status["ours"]
    drop_in = probe(config, "containerd-config", "--containerd-version", "2.x")
    assert isinstance(drop_in["ours"], list) and \
        "reconciler.containerd_config" in drop_in["ours"]


def test_the_daemon_with_a_grpc_socket_loads_grpc_and_the_stubs(tmp_path: Path) -> None:
    """The probe sees gRPC when it is used: grpc_socket set, the started daemon has loaded
    grpc, protobuf and our stubs (the negative results above are not a blind probe)."""
    result = probe(floor_config(tmp_path, grpc=True), "daemon-start")
    loaded = result["loaded"]
    assert isinstance(loaded, list)
    assert result["code"] == 0
    assert {"grpc", "google.protobuf", "reconciler.api.server",
            "reconciler.api.proto.snapshots_pb2_grpc"} <= set(loaded)


def test_the_stubs_load_without_a_warning() -> None:
    """The installed grpcio and protobuf load the committed stubs with warnings as errors
    (protobuf 5.x's "older gencode" warning is ours to silence: the age is deliberate)."""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c",
         "import reconciler.api.proto.snapshots_pb2_grpc, reconciler.api.server"],
        capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`reconciler --version` prints `reconciler <version>` from the metadata and exits 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"reconciler {version('reconciler')}\n"


Version = tuple[int, ...]
# Our requirements are all `name>=X.Y[.Z]`, optionally `,<N` (no extras, no markers).
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)>=([0-9.]+)(?:,<([0-9.]+))?$")


def parse_version(text: str) -> Version:
    """`1.66.2` as (1, 66, 2), `24.1.0` as `24.1` (pip's equality pads with zeros);
    releases only, as our floors are."""
    parts = [int(part) for part in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def declared() -> dict[str, tuple[Version, Version | None]]:
    """pyproject.toml's runtime, dev and lint requirements: normalized name -> (floor, cap)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    found = {}
    for line in [*project["dependencies"], *extras["dev"], *extras["lint"]]:
        match = REQUIREMENT.match(line.replace(" ", ""))
        assert match is not None, f"{line!r} is not name>=floor[,<cap]"
        name, low, cap = match.groups()
        found[normalized(name)] = (parse_version(low), parse_version(cap) if cap else None)
    return found


def normalized(name: str) -> str:
    """A distribution name as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_dependency_has_a_floor_and_the_constraints_pin_exactly_those() -> None:
    """constraints/minimum.txt pins every runtime, dev and lint dependency to its declared
    minimum, and nothing else: the floor job installs what pyproject.toml claims."""
    pins: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[normalized(name.strip())] = parse_version(pinned.strip())
    assert pins == {name: low for name, (low, _) in declared().items()}


def stub_requirements() -> tuple[Version, Version]:
    """The grpcio and protobuf versions the committed stubs demand at import."""
    grpc_versions = {parse_version(v) for v in re.findall(
        r"^GRPC_GENERATED_VERSION = '([^']+)'$",
        "".join(p.read_text() for p in PROTO_DIR.glob("*_pb2_grpc.py")), re.MULTILINE)}
    protobuf_versions = {tuple(int(part) for part in v) for v in re.findall(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*"
        r"(\d+),\s*(\d+),", "".join(p.read_text() for p in PROTO_DIR.glob("*_pb2.py")))}
    assert len(grpc_versions) == 1 and len(protobuf_versions) == 1
    return grpc_versions.pop(), protobuf_versions.pop()


def test_the_stubs_version_checks_are_met_by_the_declared_floors() -> None:
    """The stubs refuse a grpcio older than their generator and a protobuf runtime older
    than their gencode: both must be at or below pyproject.toml's floors."""
    grpc_needed, protobuf_needed = stub_requirements()
    requirements = declared()
    assert requirements["grpcio"][0] >= grpc_needed
    assert requirements["protobuf"][0] >= protobuf_needed
    # Newer runtimes of every major accept older gencode (protobuf 6 and 7 check only that
    # the runtime is not older), so neither carries a cap.
    assert requirements["grpcio"][1] is None
    assert requirements["protobuf"][1] is None


def serialized_descriptors(directory: Path) -> dict[str, bytes]:
    """Each *_pb2.py's serialized FileDescriptorProto (the .proto as protoc compiled it)."""
    found = {}
    for path in sorted(directory.glob("*_pb2.py")):
        match = re.search(r"AddSerializedFile\((b'.*?')\)\n", path.read_text(), re.DOTALL)
        assert match is not None, path
        found[path.name] = ast.literal_eval(match.group(1))
    return found


def test_the_committed_stubs_are_generated_from_the_committed_protos(tmp_path: Path) -> None:
    """protoc (any version) compiles the .proto files to the descriptors the committed stubs
    carry: whoever edits a .proto must run scripts/gen-stubs."""
    import grpc_tools
    from grpc_tools import protoc

    includes = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(PROTO_DIR.glob("*.proto"))
    args = ["grpc_tools.protoc", f"-I{PACKAGE_ROOT}", f"-I{includes}",
            f"--python_out={tmp_path}", *(str(p) for p in protos)]
    assert protoc.main(args) == 0
    fresh = serialized_descriptors(tmp_path / "reconciler" / "api" / "proto")
    assert fresh == serialized_descriptors(PROTO_DIR)
    assert len(fresh) == len(protos)
