"""The Kubernetes manifests and the image file under deploy/: valid against the Kubernetes
schema of a named version (offline, kubernetes-validate), consistent with each other and with
the daemon's config and spec parsers, the image file's commands linted (hadolint, which runs
shellcheck on every RUN), and the alert rules checked and unit-tested by promtool."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from reconciler.config import settings_from_mapping
from reconciler.daemon.wsgi import REQUEST_DEADLINE
from reconciler.specs import Defaults, parse_spec
from reconciler.units import Bytes
from reconciler.vocabulary import Filesystem

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = ROOT / "deploy" / "kubernetes"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
# The oldest Kubernetes the manifests are for (docs/kubernetes.md says the same).
KUBERNETES_VERSION = "1.31.0"
HADOLINT = Path(sys.executable).parent / "hadolint"


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        with path.open() as stream:
            found += [(path, doc) for doc in yaml.safe_load_all(stream) if doc]
    return found


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    docs = [doc for _, doc in _documents() if doc["kind"] == kind
            and (name is None or doc["metadata"]["name"] == name)]
    assert len(docs) == 1, f"{kind} {name}: {len(docs)} found"
    return docs[0]


def _container() -> dict[str, Any]:
    containers = _one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _mounts() -> dict[str, str]:
    """Container mount path -> the volume's host path or ConfigMap name."""
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {}
    for mount in _container()["volumeMounts"]:
        volume = volumes[mount["name"]]
        source = volume["hostPath"]["path"] if "hostPath" in volume \
            else "configmap:" + volume["configMap"]["name"]
        mounts[mount["mountPath"]] = source
    return mounts


@pytest.mark.parametrize(("path", "doc"), _documents(),
                         ids=lambda v: v.name if isinstance(v, Path) else "")
def test_every_manifest_is_valid_for_the_named_kubernetes_version(
        path: Path, doc: dict[str, Any]) -> None:
    """Strict validation: an unknown field (a typo) is an error, not ignored."""
    del path
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    """The check above can fail: a probe's misspelt key is refused."""
    broken = copy.deepcopy(_one("DaemonSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    """`kubectl apply -k deploy/kubernetes` installs every file there, the namespace first."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert listed[0] == "namespace.yaml"


def test_namespaced_objects_are_in_the_namespace() -> None:
    """Everything but the Namespace and the RuntimeClass (cluster-scoped) lives in it."""
    namespace = _one("Namespace")["metadata"]["name"]
    for _, doc in _documents():
        if doc["kind"] in ("Namespace", "RuntimeClass"):
            assert "namespace" not in doc["metadata"]
        else:
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]


def _config() -> dict[str, Any]:
    text = _one("ConfigMap", "reconciler-config")["data"]["config.toml"]
    return tomllib.loads(text)


def test_the_config_map_is_a_config_the_daemon_accepts() -> None:
    """Every key is known and valid (the same parser `reconciler run` uses)."""
    settings = settings_from_mapping(_config())
    assert settings.metrics_address is not None


def test_daemonset_paths_match_the_config() -> None:
    """State, sockets and specs are where the config says, on the volumes meant for them:
    the state and the snapshotter's socket on the node (they outlive the pod), the specs from
    their ConfigMap as a whole directory (a subPath mount never sees kubelet's updates)."""
    settings = settings_from_mapping(_config())
    mounts = _mounts()
    assert mounts[str(settings.root_path)] == str(settings.root_path)
    assert settings.grpc_socket is not None
    assert mounts[str(settings.grpc_socket.parent)] == str(settings.grpc_socket.parent)
    assert mounts[str(settings.specs_path)] == "configmap:reconciler-specs"
    assert mounts["/dev"] == "/dev"
    assert mounts["/run/udev"] == "/run/udev"
    spec_mount = next(m for m in _container()["volumeMounts"]
                      if m["mountPath"] == str(settings.specs_path))
    assert "subPath" not in spec_mount
    env = {e["name"]: e for e in _container()["env"]}
    assert env["RECONCILER_CONFIG"]["value"] == "/etc/reconciler/config.toml"
    assert "/etc/reconciler/config.toml" in mounts
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_probes_and_scrape_annotations_use_the_metrics_listener() -> None:
    """Liveness on /healthz, readiness on /readyz, Prometheus on /metrics: all on the port
    of `metrics_address`."""
    port = int(_config()["metrics_address"].rsplit(":", 1)[1])
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = _one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container["securityContext"]["privileged"] is True


def test_example_specs_parse_and_their_parents_are_there() -> None:
    """Each key of the specs ConfigMap is a spec the daemon accepts, named as its file."""
    data = _one("ConfigMap", "reconciler-specs")["data"]
    defaults = Defaults(size=Bytes(1 << 30), filesystem=Filesystem.EXT4)
    specs = {key.removesuffix(".toml"): parse_spec(key.removesuffix(".toml"), text, defaults)
             for key, text in data.items()}
    assert all(key.endswith(".toml") for key in data)
    for spec in specs.values():
        assert spec.parent is None or spec.parent in specs
    assert any(spec.nodes for spec in specs.values())


def test_runtime_class_and_daemonset_select_the_same_nodes() -> None:
    """A pod of the RuntimeClass lands only where a daemon serves the snapshotter."""
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    runtime = _one("RuntimeClass")
    assert runtime["scheduling"]["nodeSelector"] == pod["nodeSelector"]


def test_the_pod_shares_the_hosts_ipc_namespace_for_udev() -> None:
    """hostIPC (issue 25): udev's rules confirm libdevmapper's cookies, SysV semaphores, in the
    host's IPC namespace; in a namespace of its own the daemon would make every node itself."""
    assert _one("DaemonSet")["spec"]["template"]["spec"]["hostIPC"] is True


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True,
                          text=True, check=False)


def test_the_image_file_passes_hadolint() -> None:
    """Every rule, shellcheck's on each RUN included; an ignored rule says why in the file."""
    result = _hadolint(CONTAINERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    text = CONTAINERFILE.read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], \
                f"line {i + 1}: an ignored rule needs its reason on the line above"


def test_hadolint_finds_what_is_wrong(tmp_path: Path) -> None:
    """The lint above can fail: an unpinned base image and a bare `cd` are reported."""
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM debian:latest\nRUN cd /src && make\n")
    result = _hadolint(bad)
    assert result.returncode == 1
    assert "DL3007" in result.stdout
    assert "DL3003" in result.stdout


def test_the_image_has_the_programs_the_daemon_runs() -> None:
    """The runtime stage installs the packages of every program reconciler runs."""
    runtime_stage = CONTAINERFILE.read_text().rsplit("\nFROM ", 1)[1]
    for package in ("libdevmapper1.02.1", "dmsetup", "thin-provisioning-tools", "e2fsprogs",
                    "xfsprogs", "util-linux", "mount", "python3"):
        assert f" {package}" in runtime_stage, package


ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: scripts/setup installs prometheus"
    return subprocess.run([promtool, *args], capture_output=True, text=True, check=False,
                          cwd=ALERTS.parent)


def test_alert_rules_are_valid_and_fire_when_they_should() -> None:
    """`promtool check rules`, then its unit tests (alerts_test.yaml): each alert fires on
    the series meant to fire it, at the time it should, and not before."""
    checked = _promtool("check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    tested = _promtool("test", "rules", "alerts_test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_alert_rules_use_only_metrics_the_daemon_exports() -> None:
    """Every reconciler_* name in an alert's expression is one the README's metric table
    documents (with its `_total` for a counter), so a renamed metric fails here, not in a
    silent alert."""
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Metrics and health", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(reconciler_[a-z_]+)`", section))
    used = {name for rule in rules for name in re.findall(r"reconciler_[a-z_]+", rule["expr"])}
    assert used
    assert used <= documented, used - documented


def test_the_systemd_unit_raises_the_descriptor_limit() -> None:
    """The unit sets LimitNOFILE (systemd's default soft limit, 1024, is what a connection
    flood exhausted) to 65536 or more."""
    unit = (ROOT / "contrib" / "reconciler.service").read_text()
    service = unit.split("[Service]", 1)[1].split("\n[", 1)[0]
    limits = re.findall(r"^LimitNOFILE=(\d+)$", service, flags=re.MULTILINE)
    assert len(limits) == 1 and int(limits[0]) >= 65536


def test_liveness_rides_out_a_full_metrics_listener() -> None:
    """A liveness probe answered 503 while slow clients hold every metrics connection (each
    for at most REQUEST_DEADLINE) is never failed long enough to restart the pod."""
    probe = _container()["livenessProbe"]
    assert probe["periodSeconds"] * (probe["failureThreshold"] - 1) > 2 * REQUEST_DEADLINE
