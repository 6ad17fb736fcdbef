"""A tiny OCI image archive for `ctr images import`: one layer holding a static busybox."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

BUSYBOX_PATHS = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
IMAGE_NAME = "docker.io/library/reconciler-tiny:latest"


def _blob(archive: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}", len(data)


def _layer(busybox: Path, marker: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for directory in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            layer.addfile(info)
        data = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        layer.addfile(info, io.BytesIO(data))
        for applet in ("sh", "echo", "cat", "ls", "sleep"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            layer.addfile(link)
        if marker:
            data = f"{marker}\n".encode()
            info = tarfile.TarInfo("etc/marker")
            info.size, info.mode = len(data), 0o644
            layer.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_image(path: Path, name: str = IMAGE_NAME,
                cmd: Sequence[str] = ("/bin/echo", "ok"), *, marker: str = "") -> str:
    """Write the archive to `path`, an image called `name` whose default command is `cmd`;
    returns the image name it carries. A `marker` (written to /etc/marker) makes the layer,
    and so its snapshots, differ from another image's."""
    busybox = next((p for p in BUSYBOX_PATHS if p.exists()), None)
    if busybox is None:
        raise FileNotFoundError("no static busybox: install Debian's busybox-static")
    layer = _layer(busybox, marker)
    with tarfile.open(path, "w") as archive:
        layer_digest, layer_size = _blob(archive, layer)
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": list(cmd), "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }).encode()
        config_digest, config_size = _blob(archive, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer_size}],
        }).encode()
        manifest_digest, manifest_size = _blob(archive, manifest)
        index = json.dumps({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_size,
                "annotations": {"io.containerd.image.name": name,
                                "org.opencontainers.image.ref.name": "latest"},
            }],
        }).encode()
        for member, data in (("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
                             ("index.json", index)):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return name
