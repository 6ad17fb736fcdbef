"""Kubernetes' way in, on a real kernel: containerd's CRI plugin runs a pod and a container the
way kubelet asks for them (runtime.v1 over gRPC, tests/kernel/cri.py), and the container's
root filesystem is one of our thin snapshots, which removing the pod removes.

Two node setups, each from the drop-in of `reconciler containerd-config` and in the version's
own key layout: our snapshotter as CRI's default (containerd 1.6.20 and 2.3.4), and a runtime
handler `reconciler` whose snapshotter is ours beside containerd's own default (2.x only:
containerd 1.6 has no snapshotter per runtime handler, and `--handler-only` refuses it).
Images come by PullImage, as kubelet gets them, because on 2.x the pull decides the
snapshotter that unpacks: from a registry in the test's process (tests/kernel/registry.py),
never the network. The pod uses the node's network, so no CNI plugin is needed."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.containerd_stack import (
    SNAPSHOTTER,
    TIMEOUT,
    VERSIONS,
    Containerd,
    Stack,
    containerd_for,
    containerd_stack,
    mount_command,
    wait_for,
)
from tests.kernel.cri import CriClient
from tests.kernel.oci_image import build_image
from tests.kernel.registry import LocalRegistry

pytestmark = pytest.mark.kernel
# CRI's containerd namespace: the images and containers kubelet sees are there.
K8S_NAMESPACE = "k8s.io"
# The sandbox ("pause") image must keep running for the pod's lifetime (it holds the pod's
# namespaces), so the images' default command sleeps; the container overrides it.
REPOSITORY = "reconciler/cri"
SLEEP = ("/bin/sleep", "1000000")
PROOF = "written-by-the-container"
HANDLER = "reconciler"
# containerd 2.x's PullImage reads the runtime handler from this annotation of the pod's
# config it is given; kubelet sets it (KEP-4216's pull per runtime class).
HANDLER_ANNOTATION = "io.containerd.cri.runtime-handler"
DEFAULT_SNAPSHOTTER = "overlayfs"


@dataclass
class Images:
    """The registry and the images it serves: `main` is also the sandbox image; `other` and
    `field` each have a layer of their own, so that where a pull unpacked is where their
    layer's snapshot is."""

    registry: LocalRegistry
    certs: Path

    @property
    def main(self) -> str:
        return self.registry.reference(REPOSITORY, "main")

    @property
    def other(self) -> str:
        return self.registry.reference(REPOSITORY, "other")

    @property
    def field(self) -> str:
        return self.registry.reference(REPOSITORY, "field")

    def layer(self, tag: str) -> str:
        return self.registry.layers(REPOSITORY, tag)[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """A registry on 127.0.0.1 serving the test's two images, and its hosts.toml."""
    work = tmp_path_factory.mktemp("registry")
    with LocalRegistry() as registry:
        for tag in ("main", "other", "field"):
            build_image(work / f"{tag}.tar", f"{REPOSITORY}:{tag}", SLEEP, marker=tag)
            registry.push(work / f"{tag}.tar", REPOSITORY, tag)
        yield Images(registry, registry.write_hosts_dir(work / "certs.d"))


def cri_toml(version: str, work: Path, images: Images) -> str:
    """CRI's settings of the test's own, beside the drop-in's (snapshotter, runtime handler):
    the local sandbox image, the registry's hosts directory, CNI directories (the plugin
    creates its conf_dir, and /etc is read-only in the VM), no AppArmor, a local stream
    server. In 1.6's layout (config version 2) or 2.x's (version 3, CRI split into the
    images and runtime plugins, the stream server left in the gRPC one)."""
    grpc_cri = 'plugins."io.containerd.grpc.v1.cri"'
    stream = '  stream_server_address = "127.0.0.1"\n  stream_server_port = "0"\n'
    if version != "2.x":
        return (f'[{grpc_cri}]\n  sandbox_image = "{images.main}"\n'
                f'  disable_apparmor = true\n{stream}'
                f'  [{grpc_cri}.cni]\n    bin_dir = "{work}/cni/bin"\n'
                f'    conf_dir = "{work}/cni/net.d"\n'
                f'  [{grpc_cri}.registry]\n    config_path = "{images.certs}"\n')
    cri_images = 'plugins."io.containerd.cri.v1.images"'
    runtime = 'plugins."io.containerd.cri.v1.runtime"'
    return (f'[{cri_images}.pinned_images]\n  sandbox = "{images.main}"\n'
            f'[{cri_images}.registry]\n  config_path = "{images.certs}"\n'
            f'[{runtime}]\n  disable_apparmor = true\n'
            f'[{runtime}.cni]\n  bin_dirs = ["{work}/cni/bin"]\n'
            f'  conf_dir = "{work}/cni/net.d"\n'
            f'[{grpc_cri}]\n{stream}')


@contextmanager
def cri_stack(work: Path, containerd: Containerd, images: Images, *,
              handler_only: bool = False) -> Iterator[tuple[Stack, CriClient]]:
    """containerd with its CRI plugin and the drop-in of `reconciler containerd-config`
    (`--handler-only` if asked), `reconciler run`, and a CRI client on containerd's
    socket."""
    if shutil.which("runc") is None:
        pytest.skip("needs Debian's runc")
    with containerd_stack(work, containerd=containerd, namespace=K8S_NAMESPACE,
                          plugins_toml=cri_toml(containerd.version, work, images),
                          handler_only=handler_only) as stack:
        client = CriClient.connect(stack.containerd_socket, work / "cri-stubs")
        try:
            yield stack, client
        finally:
            client.close()


@pytest.fixture(scope="module", params=VERSIONS)
def default_ours(request: pytest.FixtureRequest, images: Images,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, CriClient]]:
    """CRI with our snapshotter as its default (both versions)."""
    containerd = containerd_for(request.param, tmp_path_factory)
    with cri_stack(tmp_path_factory.mktemp("cri"), containerd, images) as stack:
        yield stack


@pytest.fixture(scope="module")
def handler_only(images: Images, tmp_path_factory: pytest.TempPathFactory,
                 ) -> Iterator[tuple[Stack, CriClient]]:
    """containerd 2.x whose runtime handler `reconciler` uses our snapshotter, CRI's default
    left as containerd's own."""
    containerd = containerd_for("2.x", tmp_path_factory)
    with cri_stack(tmp_path_factory.mktemp("cri-handler"), containerd, images,
                   handler_only=True) as stack:
        yield stack


def our_snapshots(stack: Stack) -> list[dict[str, Any]]:
    """The devices of our snapshotter API, as `reconciler status --json` lists them."""
    devices: list[dict[str, Any]] = stack.report()["devices"]  # type: ignore[assignment]
    return [d for d in devices if d["snapshot"] is not None]


def snapshot_names(stack: Stack, snapshotter: str) -> list[str]:
    """The snapshots containerd lists for a snapshotter in CRI's namespace."""
    listed = stack.ctr("snapshots", "--snapshotter", snapshotter, "ls").stdout
    return [line.split()[0] for line in listed.splitlines()[1:] if line.strip()]


def log_messages(path: Path) -> list[str]:
    """The lines a container printed, from CRI's log format `<time> <stream> <tag> <line>`."""
    return [line.split(" ", 3)[3] for line in path.read_text().splitlines()]


def pull(cri: CriClient, image: str, handler: str = "", *, field: bool = False) -> str:
    """PullImage as kubelet makes it, for a pod of `handler` if one is named: in the pod's
    annotation, or (`field`) in ImageSpec's runtime_handler."""
    pb = cri.pb
    annotations = {HANDLER_ANNOTATION: handler} if handler and not field else {}
    spec = pb.ImageSpec(image=image, runtime_handler=handler if field else "")
    ref: str = cri.images.PullImage(pb.PullImageRequest(
        image=spec, sandbox_config=pb.PodSandboxConfig(annotations=annotations)),
        timeout=TIMEOUT).image_ref
    return ref


@dataclass
class Pod:
    """A pod whose one container printed its mounts and wrote PROOF, and exited 0."""

    pod_id: str
    container_id: str
    printed: list[str]

    @property
    def root_device(self) -> str:
        """What the container's "/" was mounted from, as it saw it."""
        return next(line.split()[0] for line in self.printed if line.split()[1:2] == ["/"])


def pod_config(cri: CriClient, log_dir: Path) -> Any:
    pb = cri.pb
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="cri-test", uid=str(uuid.uuid4()),
                                       namespace="default"),
        log_directory=str(log_dir),
        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.POD, ipc=pb.POD))))


@contextmanager
def running_pod(stack: Stack, cri: CriClient, image: str, handler: str = "") -> Iterator[Pod]:
    """RunPodSandbox (node network, `handler`), CreateContainer, StartContainer; yields once
    the container has exited 0 having written PROOF; stops and removes the pod after."""
    pb = cri.pb
    log_dir = stack.work / f"pod-logs-{uuid.uuid4().hex[:8]}"
    config = pod_config(cri, log_dir)
    pod_id: str = cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(
        config=config, runtime_handler=handler), timeout=TIMEOUT).pod_sandbox_id
    try:
        container_config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="writer"), image=pb.ImageSpec(image=image),
            command=["/bin/sh", "-c", f"cat /proc/self/mounts && echo {PROOF} > /proof"
                                      " && cat /proof"],
            log_path="writer/0.log",
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER,
                                                     ipc=pb.POD))))
        container_id: str = cri.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=container_config, sandbox_config=config),
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
        yield Pod(pod_id, container_id, printed)
    finally:
        # Idempotent by CRI's contract; run even when the test failed above, so that no
        # pod outlives containerd holding our devices open.
        cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                                   timeout=TIMEOUT)
        cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                     timeout=TIMEOUT)


def assert_root_is_ours(stack: Stack, pod: Pod, tmp_path: Path) -> None:
    """The container's "/" was one of our thin devices, made for its key, and what it wrote
    is on that snapshot; containerd lists the pod's and the container's snapshots Active."""
    root_device = pod.root_device
    assert root_device.startswith(f"/dev/mapper/{stack.world.pool}-snap-"), pod.printed
    by_path = {d["path"]: d for d in our_snapshots(stack) if d["path"]}
    root = by_path[root_device]["snapshot"]
    # containerd names a snapshotter's keys <namespace>/<counter>/<its key>.
    assert root["kind"] == "active" and root["key"].startswith(f"{K8S_NAMESPACE}/")
    assert root["key"].rsplit("/", 1)[1] == pod.container_id, root
    listed = {line.split()[0]: line.split()[1:]
              for line in stack.snapshots("ls").stdout.splitlines()[1:] if line.strip()}
    assert listed[pod.container_id][-1] == "Active" and listed[pod.pod_id][-1] == "Active"
    mnt = tmp_path / f"mnt-{pod.container_id[:12]}"
    mnt.mkdir()
    argv = mount_command(stack, pod.container_id, mnt)
    assert argv[3] == root_device, argv
    subprocess.run(argv, check=True)
    try:
        assert (mnt / "proof").read_text() == f"{PROOF}\n"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def assert_freed(stack: Stack, pod: Pod) -> None:
    """After StopPodSandbox and RemovePodSandbox, containerd's collector removes the pod's
    snapshots through us: their devices leave the kernel, none of ours is Faulty."""
    pod_keys = {pod.pod_id, pod.container_id}

    def still_ours() -> list[str]:
        return [d["name"] for d in our_snapshots(stack)
                if d["snapshot"]["key"].rsplit("/", 1)[-1] in pod_keys
                and d["snapshot"]["removal"] is None]

    stack.collect_until("our snapshots of the pod removed", still_ours)
    wait_for("the container's device gone from the kernel",
             lambda: not Path(pod.root_device).exists())
    listed_after = stack.snapshots("ls").stdout
    assert pod.container_id not in listed_after and pod.pod_id not in listed_after
    faulty = [d["name"] for d in our_snapshots(stack) if d["state"] == "Faulty"]
    assert faulty == [], stack.logs()


def test_a_pod_runs_on_our_snapshots_through_cri(default_ours: tuple[Stack, CriClient],
                                                 images: Images, tmp_path: Path) -> None:
    """Our snapshotter as CRI's default: PullImage from the local registry unpacks into it;
    RunPodSandbox, CreateContainer, StartContainer: the container's root is a thin snapshot
    of ours, it exits 0, the file it wrote is on that snapshot; StopPodSandbox and
    RemovePodSandbox remove our devices, none Faulty."""
    stack, cri = default_ours
    pb = cri.pb
    version = cri.runtime.Version(pb.VersionRequest(version="v1"), timeout=TIMEOUT)
    assert (version.runtime_name, version.runtime_api_version) == ("containerd", "v1")

    image_id = pull(cri, images.main)
    assert cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(
        image=images.main)), timeout=TIMEOUT).image.id == image_id
    assert f"GET /v2/{REPOSITORY}/blobs/{images.layer('main')}" in images.registry.requests
    assert images.layer("main") in snapshot_names(stack, SNAPSHOTTER)

    with running_pod(stack, cri, images.main) as pod:
        assert_root_is_ours(stack, pod, tmp_path)
    assert_freed(stack, pod)



def test_a_pull_for_the_handler_unpacks_into_ours_and_its_pod_runs_there(
        handler_only: tuple[Stack, CriClient], images: Images, tmp_path: Path) -> None:
    """containerd 2.x, runtime handler `reconciler`: PullImage with the pod annotation
    `io.containerd.cri.runtime-handler: reconciler` unpacks into our snapshotter, not the
    default; a pod of that handler runs with its container's root on our device, freed
    after."""
    stack, cri = handler_only
    pull(cri, images.main, handler=HANDLER)
    layer = images.layer("main")
    assert layer in snapshot_names(stack, SNAPSHOTTER)
    assert layer not in snapshot_names(stack, DEFAULT_SNAPSHOTTER)
    with running_pod(stack, cri, images.main, HANDLER) as pod:
        assert_root_is_ours(stack, pod, tmp_path)
    assert_freed(stack, pod)


def test_a_pull_without_the_annotation_unpacks_into_the_default(
        handler_only: tuple[Stack, CriClient], images: Images, tmp_path: Path) -> None:
    """containerd 2.x, runtime handler `reconciler`: PullImage without the annotation
    unpacks into CRI's default snapshotter only; a pod of the handler still gets its root
    on our device, CRI unpacking the image into ours when it creates the container."""
    stack, cri = handler_only
    pull(cri, images.other)
    layer = images.layer("other")
    assert layer in snapshot_names(stack, DEFAULT_SNAPSHOTTER)
    assert layer not in snapshot_names(stack, SNAPSHOTTER)
    with running_pod(stack, cri, images.other, HANDLER) as pod:
        assert_root_is_ours(stack, pod, tmp_path)
        assert layer in snapshot_names(stack, SNAPSHOTTER)
    assert_freed(stack, pod)


def test_a_pull_naming_the_handler_in_its_image_spec_unpacks_into_ours(
        handler_only: tuple[Stack, CriClient], images: Images) -> None:
    """containerd 2.x, runtime handler `reconciler`: PullImage with ImageSpec's
    runtime_handler (kubelet's RuntimeClassInImageCriApi way, no annotation) unpacks into
    our snapshotter, not the default."""
    stack, cri = handler_only
    pull(cri, images.field, HANDLER, field=True)
    layer = images.layer("field")
    assert layer in snapshot_names(stack, SNAPSHOTTER)
    assert layer not in snapshot_names(stack, DEFAULT_SNAPSHOTTER)
