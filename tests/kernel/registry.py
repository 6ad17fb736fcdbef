"""A local OCI registry for the kernel tier: what CRI's PullImage pulls from, with nothing from
the network.

kubelet gets images by PullImage, and containerd 2.x's CRI decides there which snapshotter
unpacks them (its default one, or the one of the runtime handler the pull is made for), so the
CRI test must pull rather than `ctr images import`. This is the read side of the OCI
distribution spec, just enough for containerd 1.6's and 2.3.4's resolvers and fetchers:
`GET /v2/`, `HEAD`/`GET /v2/<name>/manifests/<tag or digest>`, `GET /v2/<name>/blobs/<digest>`,
over plain HTTP on 127.0.0.1 and a free port, in a thread of the test's process. It serves
images built by tests/kernel/oci_image.py. Test support only, as tests/kernel/cri.py is."""

from __future__ import annotations

import json
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


class LocalRegistry:
    """Images pushed from OCI archives, served while the registry is entered."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: set[str] = set()
        self.tags: dict[tuple[str, str], str] = {}
        # What was asked of us, "METHOD path": a test can tell a pull really came here.
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="local-registry")

    @property
    def host(self) -> str:
        """host:port, as it appears in image references and in certs.d's directory names."""
        return f"127.0.0.1:{self._server.server_address[1]}"

    def reference(self, repository: str, tag: str) -> str:
        """The image reference containerd pulls for `repository:tag` from this registry."""
        return f"{self.host}/{repository}:{tag}"

    def push(self, archive: Path, repository: str, tag: str) -> str:
        """Serve the image of an OCI archive (tests/kernel/oci_image.py's) as
        `repository:tag`; returns its manifest's digest."""
        with tarfile.open(archive) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}

            def read(name: str) -> bytes:
                extracted = tar.extractfile(members[name])
                assert extracted is not None, name
                return extracted.read()

            index = json.loads(read("index.json"))
            for name in members:
                if name.startswith("blobs/sha256/"):
                    self.blobs["sha256:" + name.rsplit("/", 1)[1]] = read(name)
        digest: str = index["manifests"][0]["digest"]
        self.manifests.add(digest)
        self.tags[(repository, tag)] = digest
        return digest

    def layers(self, repository: str, tag: str) -> list[str]:
        """The digests of an image's layers: for these uncompressed layers, each is also the
        layer's diff ID, so the first is the chain ID of its committed snapshot."""
        manifest = json.loads(self.blobs[self.tags[(repository, tag)]])
        return [layer["digest"] for layer in manifest["layers"]]

    def write_hosts_dir(self, root: Path) -> Path:
        """A directory for CRI's `registry.config_path` (containerd's docs/hosts.md) where
        this registry's host is served over plain HTTP, for pull and resolve; returns it."""
        host_dir = root / self.host
        host_dir.mkdir(parents=True, exist_ok=True)
        (host_dir / "hosts.toml").write_text(
            f'server = "http://{self.host}"\n\n[host."http://{self.host}"]\n'
            f'  capabilities = ["pull", "resolve"]\n')
        return root

    def __enter__(self) -> LocalRegistry:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for a GET of `path` (a HEAD sends the same headers)."""
        if path in ("/v2", "/v2/"):
            return 200, {"Content-Type": "application/json",
                         "Docker-Distribution-API-Version": "registry/2.0"}, b"{}"
        match = _PATH.match(path)
        if match is None:
            return _error(404, "NAME_UNKNOWN", path)
        name, kind, ref = match.group("name", "kind", "ref")
        if kind == "blobs":
            if ref not in self.blobs:
                return _error(404, "BLOB_UNKNOWN", ref)
            return 200, {"Content-Type": "application/octet-stream",
                         "Docker-Content-Digest": ref}, self.blobs[ref]
        digest = ref if ref.startswith("sha256:") else self.tags.get((name, ref), "")
        if digest not in self.manifests or (name, digest) not in {
                (repository, target) for (repository, _), target in self.tags.items()}:
            return _error(404, "MANIFEST_UNKNOWN", ref)
        return 200, {"Content-Type": MANIFEST_TYPE,
                     "Docker-Content-Digest": digest}, self.blobs[digest]


def _error(status: int, code: str, detail: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"errors": [{"code": code, "message": code.lower().replace("_", " "),
                                   "detail": detail}]}).encode()
    return status, {"Content-Type": "application/json"}, body


def _handler_for(registry: LocalRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._reply(with_body=True)

        def do_HEAD(self) -> None:
            self._reply(with_body=False)

        def _reply(self, *, with_body: bool) -> None:
            registry.requests.append(f"{self.command} {self.path}")
            status, headers, body = registry.answer(self.path.split("?", 1)[0])
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # requests records what matters; stderr would only clutter pytest's output.
            pass

    return Handler
