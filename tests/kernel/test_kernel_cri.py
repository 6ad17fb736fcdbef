"""Kubernetes' way in, on a real kernel: containerd's CRI plugin (Debian's 1.6) configured
with `snapshotter = "reconciler"` runs a pod and a container the way kubelet asks for them
(runtime.v1 over gRPC, tests/kernel/cri.py), and the container's root filesystem is one of our
thin snapshots, which removing the pod removes.

Nothing comes from the network: the sandbox ("pause") image and the container's image are
one local image imported into CRI's namespace, and the pod uses the node's network, so no
CNI plugin is needed."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.containerd_stack import (
    SNAPSHOTTER,
    TIMEOUT,
    Stack,
    containerd_stack,
    mount_command,
    wait_for,
)
from tests.kernel.cri import CriClient
from tests.kernel.oci_image import build_image

pytestmark = pytest.mark.kernel
# CRI's containerd namespace: the images and containers kubelet sees are there.
K8S_NAMESPACE = "k8s.io"
# The sandbox image must keep running for the pod's lifetime (it holds the pod's
# namespaces), so this image's default command sleeps; the container overrides it.
IMAGE = "docker.io/library/reconciler-cri:latest"
PROOF = "written-by-the-container"


def cri_plugin_config(work: Path) -> str:
    """containerd 1.6's CRI settings (config version 2): our snapshotter, a local sandbox
    image, and CNI directories of the test's own (the plugin creates its conf_dir, and
    /etc is read-only in the VM)."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return (f'[{cri}]\n  sandbox_image = "{IMAGE}"\n  disable_apparmor = true\n'
            f'  stream_server_address = "127.0.0.1"\n  stream_server_port = "0"\n'
            f'  [{cri}.containerd]\n    snapshotter = "{SNAPSHOTTER}"\n'
            f'  [{cri}.cni]\n    bin_dir = "{work}/cni/bin"\n'
            f'    conf_dir = "{work}/cni/net.d"\n')


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """containerd with its CRI plugin on our proxy snapshotter, and `reconciler run`."""
    if shutil.which("runc") is None:
        pytest.skip("needs Debian's runc")
    work = tmp_path_factory.mktemp("cri")
    with containerd_stack(work, plugins_toml=cri_plugin_config(work),
                          namespace=K8S_NAMESPACE) as stack:
        yield stack


@pytest.fixture(scope="module")
def cri(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CriClient]:
    """A CRI client on containerd's socket, where the CRI plugin serves runtime.v1."""
    client = CriClient.connect(stack.containerd_socket, tmp_path_factory.mktemp("cri-stubs"))
    try:
        yield client
    finally:
        client.close()


def our_snapshots(stack: Stack) -> list[dict[str, Any]]:
    """The devices of our snapshotter API, as `reconciler status --json` lists them."""
    devices: list[dict[str, Any]] = stack.report()["devices"]  # type: ignore[assignment]
    return [d for d in devices if d["snapshot"] is not None]


def log_messages(path: Path) -> list[str]:
    """The lines a container printed, from CRI's log format `<time> <stream> <tag> <line>`."""
    return [line.split(" ", 3)[3] for line in path.read_text().splitlines()]


def test_a_pod_runs_on_our_snapshots_through_cri(stack: Stack, cri: CriClient,
                                                 tmp_path: Path) -> None:
    """RunPodSandbox (node network), CreateContainer, StartContainer: the container's root
    is a thin snapshot of ours, it exits 0, its log and the file it wrote on that snapshot
    are there; StopPodSandbox and RemovePodSandbox remove our devices, none Faulty."""
    pb = cri.pb
    version = cri.runtime.Version(pb.VersionRequest(version="v1"), timeout=TIMEOUT)
    assert (version.runtime_name, version.runtime_api_version) == ("containerd", "v1")

    build_image(stack.work / "image.tar", IMAGE, ("/bin/sleep", "1000000"))
    stack.ctr("images", "import", "--snapshotter", SNAPSHOTTER, str(stack.work / "image.tar"))
    # The CRI plugin learns of images from containerd's events, a moment after the import.
    wait_for("the CRI plugin knows the imported image", lambda: cri.images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=IMAGE)), timeout=TIMEOUT,
    ).HasField("image"))

    log_dir = stack.work / "pod-logs"
    pod_config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="cri-test", uid=str(uuid.uuid4()),
                                       namespace="default"),
        log_directory=str(log_dir),
        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.POD,
                                                 ipc=pb.POD))))
    pod_id: str = cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config),
                                            timeout=TIMEOUT).pod_sandbox_id
    try:
        container_config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="writer"), image=pb.ImageSpec(image=IMAGE),
            command=["/bin/sh", "-c", f"cat /proc/self/mounts && echo {PROOF} > /proof"
                                      " && cat /proof"],
            log_path="writer/0.log",
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER,
                                                     ipc=pb.POD))))
        container_id: str = cri.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=container_config, sandbox_config=pod_config),
            timeout=TIMEOUT).container_id
        cri.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id),
                                   timeout=TIMEOUT)

        def status() -> Any:
            return cri.runtime.ContainerStatus(
                pb.ContainerStatusRequest(container_id=container_id), timeout=TIMEOUT).status

        wait_for("the container to exit", lambda: status().state == pb.CONTAINER_EXITED)
        exited = status()
        log = log_dir / "writer" / "0.log"
        assert exited.exit_code == 0, (f"{exited.reason}: {exited.message}\n"
                                       f"{log.read_text() if log.exists() else ''}"
                                       f"{stack.logs()}")
        printed = log_messages(log)
        assert printed[-1] == PROOF, printed

        # The container's "/" was mounted from one of our thin devices, made for its key.
        root_device = next(line.split()[0] for line in printed
                           if line.split()[1:2] == ["/"])
        assert root_device.startswith(f"/dev/mapper/{stack.world.pool}-snap-"), printed
        by_path = {d["path"]: d for d in our_snapshots(stack) if d["path"]}
        root = by_path[root_device]["snapshot"]
        # containerd names a snapshotter's keys <namespace>/<counter>/<its key>.
        assert root["kind"] == "active" and root["key"].startswith(f"{K8S_NAMESPACE}/")
        assert root["key"].rsplit("/", 1)[1] == container_id, root
        listed = {line.split()[0]: line.split()[1:]
                  for line in stack.snapshots("ls").stdout.splitlines()[1:] if line.strip()}
        assert listed[container_id][-1] == "Active" and listed[pod_id][-1] == "Active"

        # What the container wrote is on that snapshot.
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        argv = mount_command(stack, container_id, mnt)
        assert argv[3] == root_device, argv
        subprocess.run(argv, check=True)
        try:
            assert (mnt / "proof").read_text() == f"{PROOF}\n"
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        # Idempotent by CRI's contract; run even when the test failed above, so that no
        # pod outlives containerd holding our devices open.
        cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                                   timeout=TIMEOUT)
        cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                     timeout=TIMEOUT)

    pod_keys = {pod_id, container_id}

    def still_ours() -> list[str]:
        return [d["name"] for d in our_snapshots(stack)
                if d["snapshot"]["key"].rsplit("/", 1)[-1] in pod_keys
                and d["snapshot"]["removal"] is None]

    stack.collect_until("our snapshots of the pod removed", still_ours)
    wait_for("the container's device gone from the kernel",
             lambda: not Path(root_device).exists())
    listed_after = stack.snapshots("ls").stdout
    assert container_id not in listed_after and pod_id not in listed_after
    faulty = [d["name"] for d in our_snapshots(stack) if d["state"] == "Faulty"]
    assert faulty == [], stack.logs()
