"""The Kubernetes manifests under deploy/kubernetes, as `kubectl kustomize` renders them:
valid against the schema of every Kubernetes version they are for (offline,
kubernetes-validate), consistent with each other and with the daemon's config and spec
parsers, and rolled out when the config changes (the generated ConfigMap's hash)."""

from __future__ import annotations

import copy
import re
import shutil
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
from tests.unit.project.manifests import (
    KUBERNETES_VERSIONS,
    MANIFESTS,
    ROOT,
    kustomize,
    one,
)

RENDERED = kustomize(MANIFESTS)
CONFIG = MANIFESTS / "config.toml"


def _pod(docs: list[dict[str, Any]] = RENDERED) -> dict[str, Any]:
    pod: dict[str, Any] = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    return pod


def _container(docs: list[dict[str, Any]] = RENDERED) -> dict[str, Any]:
    containers = _pod(docs)["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _mounts(docs: list[dict[str, Any]] = RENDERED) -> dict[str, str]:
    """Container mount path -> the volume's host path or ConfigMap name."""
    volumes = {v["name"]: v for v in _pod(docs)["volumes"]}
    mounts = {}
    for mount in _container(docs)["volumeMounts"]:
        volume = volumes[mount["name"]]
        source = volume["hostPath"]["path"] if "hostPath" in volume \
            else "configmap:" + volume["configMap"]["name"]
        mounts[mount["mountPath"]] = source
    return mounts


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", RENDERED, ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_every_object_is_valid_for_each_kubernetes_version(doc: dict[str, Any],
                                                           version: str) -> None:
    """Strict validation of what `kubectl apply -k` sends: an unknown field (a typo) or one a
    version does not have yet is an error, not ignored."""
    assert kubernetes_validate.validate(doc, version, strict=True) == version.rsplit(".", 1)[0]


def test_strict_validation_catches_a_misspelt_field() -> None:
    """The check above can fail: a probe's misspelt key is refused."""
    broken = copy.deepcopy(one(RENDERED, "DaemonSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_uses_every_file_and_generates_the_config() -> None:
    """Every manifest beside kustomization.yaml is a resource, the namespace first, and
    config.toml is the generated ConfigMap's only file."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert listed[0] == "namespace.yaml"
    [generated] = kustomization["configMapGenerator"]
    assert generated["files"] == [CONFIG.name]
    assert sorted(p.name for p in MANIFESTS.iterdir() if p.is_file()) \
        == sorted([*on_disk, "kustomization.yaml", CONFIG.name])


def test_namespaced_objects_are_in_the_namespace() -> None:
    """Everything but the Namespace and the RuntimeClass (cluster-scoped) lives in it."""
    namespace = one(RENDERED, "Namespace")["metadata"]["name"]
    for doc in RENDERED:
        if doc["kind"] in ("Namespace", "RuntimeClass"):
            assert "namespace" not in doc["metadata"]
        else:
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]


def _config() -> dict[str, Any]:
    return tomllib.loads(CONFIG.read_text())


def test_the_config_map_is_the_config_file_and_one_the_daemon_accepts() -> None:
    """The generated ConfigMap holds config.toml as it is; every key is known and valid (the
    same parser `reconciler run` uses)."""
    generated = one(RENDERED, "ConfigMap", "reconciler-config-")
    assert generated["data"] == {"config.toml": CONFIG.read_text()}
    settings = settings_from_mapping(_config())
    assert settings.metrics_address is not None


def test_daemonset_paths_match_the_config() -> None:
    """State, sockets and specs are where the config says, on the volumes meant for them:
    the state and the snapshotter's socket on the node (they outlive the pod), the config
    and the specs from their ConfigMaps as whole directories (a subPath mount never sees an
    update); RECONCILER_CONFIG names the config file in its directory."""
    settings = settings_from_mapping(_config())
    mounts = _mounts()
    assert mounts[str(settings.root_path)] == str(settings.root_path)
    assert settings.grpc_socket is not None
    assert mounts[str(settings.grpc_socket.parent)] == str(settings.grpc_socket.parent)
    assert mounts[str(settings.specs_path)] == "configmap:reconciler-specs"
    assert mounts["/dev"] == "/dev"
    assert mounts["/run/udev"] == "/run/udev"
    assert not any("subPath" in m for m in _container()["volumeMounts"])
    env = {e["name"]: e for e in _container()["env"]}
    config_path = Path(env["RECONCILER_CONFIG"]["value"])
    generated = one(RENDERED, "ConfigMap", "reconciler-config-")["metadata"]["name"]
    assert mounts[str(config_path.parent)] == f"configmap:{generated}"
    assert config_path.name == CONFIG.name
    # Neither ConfigMap is mounted over the other's directory.
    assert settings.specs_path not in config_path.parents
    assert config_path.parent not in settings.specs_path.parents
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def _edited_copy(tmp_path: Path, name: str, edit: str) -> list[dict[str, Any]]:
    """deploy/kubernetes copied, `edit` appended to its file `name`, rendered."""
    copied = tmp_path / "kubernetes"
    shutil.copytree(MANIFESTS, copied, ignore=shutil.ignore_patterns("components"))
    with (copied / name).open("a") as stream:
        stream.write(edit)
    return kustomize(copied)


def test_an_edited_config_is_a_new_config_map_and_a_new_pod_template(tmp_path: Path) -> None:
    """The rollout trigger: a changed config.toml renders a ConfigMap of another name, and
    the DaemonSet's pod template names it (so `kubectl apply -k` rolls the pods); nothing
    else of the template changes."""
    edited = _edited_copy(tmp_path, CONFIG.name, "max_removals = 3\n")
    before = one(RENDERED, "ConfigMap", "reconciler-config-")["metadata"]["name"]
    after = one(edited, "ConfigMap", "reconciler-config-")["metadata"]["name"]
    assert re.fullmatch(r"reconciler-config-[a-z0-9]{10}", after)
    assert after != before
    assert _mounts(edited)["/etc/reconciler/config"] == f"configmap:{after}"
    assert _mounts()["/etc/reconciler/config"] == f"configmap:{before}"
    template = copy.deepcopy(one(edited, "DaemonSet")["spec"]["template"])
    for volume in template["spec"]["volumes"]:
        if volume.get("configMap", {}).get("name") == after:
            volume["configMap"]["name"] = before
    assert template == one(RENDERED, "DaemonSet")["spec"]["template"]


def test_an_edited_spec_changes_no_pod_template(tmp_path: Path) -> None:
    """Specs are not rolled out: their ConfigMap keeps its name and kubelet updates the
    mounted files in place, which the running daemons watch."""
    edited = _edited_copy(tmp_path, "configmap-specs.yaml",
                          '  extra.toml: |\n    size = "1GiB"\n')
    assert "extra.toml" in one(edited, "ConfigMap", "reconciler-specs")["data"]
    assert one(edited, "DaemonSet") == one(RENDERED, "DaemonSet")


def test_the_critical_priority_class_is_covered_by_a_quota_of_the_namespace() -> None:
    """The pods keep system-node-critical, and a ResourceQuota of their namespace selects
    that class (what clusters limiting the critical classes require outside kube-system),
    with room for a pod on every node."""
    daemonset = one(RENDERED, "DaemonSet")
    priority = _pod()["priorityClassName"]
    assert priority == "system-node-critical"
    quota = one(RENDERED, "ResourceQuota")
    assert quota["metadata"]["namespace"] == daemonset["metadata"]["namespace"]
    assert {"scopeName": "PriorityClass", "operator": "In", "values": [priority]} \
        in quota["spec"]["scopeSelector"]["matchExpressions"]
    assert int(quota["spec"]["hard"]["pods"]) >= 15000


def test_probes_and_scrape_annotations_use_the_metrics_listener() -> None:
    """Liveness on /healthz, readiness on /readyz, startup on /startupz (which fails until
    the first pass has ended; /healthz passes at once), Prometheus on /metrics: all on the
    port of `metrics_address`. The startup probe gates liveness: no initial delay of its own
    to guess."""
    port = int(_config()["metrics_address"].rsplit(":", 1)[1])
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/startupz", "port": "metrics"}
    assert "initialDelaySeconds" not in container["livenessProbe"]
    annotations = one(RENDERED, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container["securityContext"]["privileged"] is True


def test_example_specs_parse_and_their_parents_are_there() -> None:
    """Each key of the specs ConfigMap is a spec the daemon accepts, named as its file."""
    data = one(RENDERED, "ConfigMap", "reconciler-specs")["data"]
    defaults = Defaults(size=Bytes(1 << 30), filesystem=Filesystem.EXT4)
    specs = {key.removesuffix(".toml"): parse_spec(key.removesuffix(".toml"), text, defaults)
             for key, text in data.items()}
    assert all(key.endswith(".toml") for key in data)
    for spec in specs.values():
        assert spec.parent is None or spec.parent in specs
    assert any(spec.nodes for spec in specs.values())


def test_runtime_class_and_daemonset_select_the_same_nodes() -> None:
    """A pod of the RuntimeClass lands only where a daemon serves the snapshotter."""
    runtime = one(RENDERED, "RuntimeClass")
    assert runtime["scheduling"]["nodeSelector"] == _pod()["nodeSelector"]


def test_the_pod_shares_the_hosts_ipc_namespace_for_udev() -> None:
    """hostIPC (issue 25): udev's rules confirm libdevmapper's cookies, SysV semaphores, in the
    host's IPC namespace; in a namespace of its own the daemon would make every node itself."""
    assert _pod()["hostIPC"] is True


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
