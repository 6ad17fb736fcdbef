"""The local OCI registry the CRI kernel test pulls from (tests/kernel/registry.py): it serves
an image built by tests/kernel/oci_image.py the way containerd's resolver and fetcher ask
for it, with no kernel and no containerd."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.oci_image import build_image
from tests.kernel.registry import MANIFEST_TYPE, LocalRegistry

NAME = "reconciler/cri"


def fetch(url: str, method: str = "GET",
          accept: str = MANIFEST_TYPE) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request (errors included)."""
    request = urllib.request.Request(url, method=method, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    """A registry serving one image as reconciler/cri:latest."""
    build_image(tmp_path / "image.tar", "docker.io/library/anything:latest", ("/bin/sleep", "9"))
    with LocalRegistry() as served:
        served.push(tmp_path / "image.tar", NAME, "latest")
        yield served


def test_resolve_by_tag_then_fetch_by_digest(registry: LocalRegistry) -> None:
    """/v2/ answers; HEAD and GET of a tag give the manifest's type, digest and size; the
    manifest by that digest and each blob it names come back with their own digest."""
    base = f"http://{registry.host}/v2"
    assert fetch(f"{base}/")[0] == 200
    status, headers, body = fetch(f"{base}/{NAME}/manifests/latest", "HEAD")
    assert (status, body) == (200, b"")
    digest = headers["Docker-Content-Digest"]
    assert headers["Content-Type"] == MANIFEST_TYPE
    status, headers, manifest = fetch(f"{base}/{NAME}/manifests/{digest}")
    assert status == 200 and int(headers["Content-Length"]) == len(manifest)
    assert f"sha256:{hashlib.sha256(manifest).hexdigest()}" == digest
    parsed = json.loads(manifest)
    for descriptor in (parsed["config"], *parsed["layers"]):
        status, headers, blob = fetch(f"{base}/{NAME}/blobs/{descriptor['digest']}",
                                      accept="*/*")
        assert status == 200 and len(blob) == descriptor["size"]
        assert f"sha256:{hashlib.sha256(blob).hexdigest()}" == descriptor["digest"]
        assert headers["Docker-Content-Digest"] == descriptor["digest"]
    config = fetch(f"{base}/{NAME}/blobs/{parsed['config']['digest']}", accept="*/*")[2]
    assert json.loads(config)["config"]["Cmd"] == ["/bin/sleep", "9"]


def test_unknown_names_are_404_in_the_distribution_error_format(
        registry: LocalRegistry) -> None:
    """An unknown tag, repository or blob is 404 with the spec's error code; nothing else is
    served."""
    base = f"http://{registry.host}/v2"
    for url, code in ((f"{base}/{NAME}/manifests/other", "MANIFEST_UNKNOWN"),
                      (f"{base}/else/manifests/latest", "MANIFEST_UNKNOWN"),
                      (f"{base}/{NAME}/blobs/sha256:{'0' * 64}", "BLOB_UNKNOWN")):
        status, _, body = fetch(url)
        assert status == 404 and json.loads(body)["errors"][0]["code"] == code, url


def test_hosts_toml_points_containerd_at_plain_http(registry: LocalRegistry,
                                                    tmp_path: Path) -> None:
    """The certs.d directory for CRI's registry.config_path holds <host>/hosts.toml naming
    the registry over plain HTTP, for pull and resolve."""
    root = registry.write_hosts_dir(tmp_path / "certs.d")
    text = (root / registry.host / "hosts.toml").read_text()
    assert f'server = "http://{registry.host}"' in text
    assert f'[host."http://{registry.host}"]' in text
    assert 'capabilities = ["pull", "resolve"]' in text
