"""Build hook: generate the gRPC stubs of containerd's snapshots API from the .proto files
kept in reconciler/api/proto, with grpcio-tools, whenever the package is built or installed
(editable installs included). Everything else about the package is in pyproject.toml."""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTOS = ("reconciler/api/proto/mount.proto", "reconciler/api/proto/snapshots.proto")


def generate_stubs() -> None:
    """Run protoc (from grpcio-tools) on our protos, writing next to them."""
    import grpc_tools
    from grpc_tools import protoc

    includes = Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{ROOT}", f"-I{includes}", f"--python_out={ROOT}",
            f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}",
            *(str(ROOT / proto) for proto in PROTOS)]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")


class BuildWithStubs(build_py):
    """build_py that first generates the stubs (setuptools runs it for editable installs too)."""

    def run(self) -> None:
        generate_stubs()
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
