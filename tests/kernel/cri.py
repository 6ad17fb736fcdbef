"""A CRI client for the tests: kubelet's side of containerd's CRI plugin, over gRPC.

Debian 12 ships no crictl, so tests/kernel/test_kernel_cri.py speaks runtime.v1 itself through
stubs compiled at test time from tests/kernel/cri_api.proto (the subset of k8s.io/cri-api it
uses) with grpcio-tools, into a directory the test owns. Test support only: the reconciler
package never sees any of it."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

PROTO = Path(__file__).resolve().parent / "cri_api.proto"
# One compilation per process: protobuf's default pool refuses a second cri_api.proto.
_modules: tuple[ModuleType, ModuleType] | None = None


def compile_stubs(out_dir: Path) -> tuple[ModuleType, ModuleType]:
    """The messages module and the gRPC module of cri_api.proto, compiled into out_dir."""
    global _modules
    if _modules is not None:
        return _modules
    import grpc_tools
    from grpc_tools import protoc

    includes = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{PROTO.parent}", f"-I{includes}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", str(PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    # The generated gRPC module imports its messages as the top-level module cri_api_pb2.
    sys.path.insert(0, str(out_dir))
    _modules = (importlib.import_module("cri_api_pb2"),
                importlib.import_module("cri_api_pb2_grpc"))
    return _modules


@dataclass
class CriClient:
    """RuntimeService and ImageService of one containerd, with the messages to call them."""

    channel: grpc.Channel
    pb: Any
    runtime: Any
    images: Any

    @classmethod
    def connect(cls, socket: Path, stubs_dir: Path) -> CriClient:
        pb, pb_grpc = compile_stubs(stubs_dir)
        channel = grpc.insecure_channel(f"unix://{socket}")
        return cls(channel, pb, pb_grpc.RuntimeServiceStub(channel),
                   pb_grpc.ImageServiceStub(channel))

    def close(self) -> None:
        self.channel.close()
