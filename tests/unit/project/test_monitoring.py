"""Monitoring: the alert rules (deploy/prometheus/alerts.yaml, checked and unit-tested by
promtool) and the optional kustomize component for the Prometheus Operator (a PodMonitor and
the rules as a PrometheusRule). kubernetes-validate has no schema for the Operator's custom
resources: their fields are checked against a strict subset of the Operator's CRD schemas
(v1), written here for the fields we use, so that a misspelt or unknown field fails."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
import yaml

from tests.unit.project.manifests import (
    MANIFESTS,
    MONITORING,
    MONITORING_OVERLAY,
    ROOT,
    kustomize,
    one,
)

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
RENDERED = kustomize(MONITORING_OVERLAY)
OPERATOR_KINDS = ("PodMonitor", "PrometheusRule")

_DURATION = {"type": "string",
             "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                        r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name", "namespace"],
             "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                            "labels": _STRINGS, "annotations": _STRINGS}}


def _strict(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


_RELABEL = _strict({
    "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "labelmap",
                        "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep"]},
    "sourceLabels": {"type": "array",
                     "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "targetLabel": {"type": "string"}, "regex": {"type": "string"},
    "replacement": {"type": "string"}, "separator": {"type": "string"}}, [])
_RULE = _strict({"alert": {"type": "string"}, "record": {"type": "string"},
                 "expr": {"type": "string"}, "for": _DURATION, "keep_firing_for": _DURATION,
                 "labels": _STRINGS, "annotations": _STRINGS}, ["expr"])
SCHEMAS: dict[str, dict[str, Any]] = {
    "PodMonitor": _strict({
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"},
        "metadata": _METADATA,
        "spec": _strict({
            "jobLabel": {"type": "string"},
            "selector": _strict({"matchLabels": _STRINGS}, ["matchLabels"]),
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _strict({
                "port": {"type": "string"}, "path": {"type": "string"},
                "interval": _DURATION, "scrapeTimeout": _DURATION,
                "relabelings": {"type": "array", "items": _RELABEL},
                "metricRelabelings": {"type": "array", "items": _RELABEL}}, ["port"])},
        }, ["selector", "podMetricsEndpoints"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "PrometheusRule": _strict({
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"}, "metadata": _METADATA,
        "spec": _strict({"groups": {"type": "array", "items": _strict({
            "name": {"type": "string", "minLength": 1}, "interval": _DURATION,
            "rules": {"type": "array", "items": _RULE}}, ["name"])}}, ["groups"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
}


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
    count = sum(len(group["rules"]) for group in yaml.safe_load(ALERTS.read_text())["groups"])
    assert f"SUCCESS: {count} rules found" in checked.stdout
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


def test_the_prometheus_rule_holds_the_rules_file() -> None:
    """The PrometheusRule's groups are alerts.yaml's, rule for rule: the rules file is the
    source, scripts/gen-prometheusrule writes the copy."""
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"], \
        "deploy/prometheus/alerts.yaml changed: run scripts/gen-prometheusrule"


@pytest.mark.parametrize("kind", OPERATOR_KINDS)
def test_the_operators_objects_have_only_fields_its_crds_know(kind: str) -> None:
    """Each rendered PodMonitor and PrometheusRule fits the subset of the Operator's v1
    schema written above (types, enums, durations; no field it does not know)."""
    jsonschema.validate(one(RENDERED, kind), SCHEMAS[kind])


def _misspelt_relabeling(doc: dict[str, Any]) -> None:
    doc["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["targetLable"] = "node"


def _interval_in_words(doc: dict[str, Any]) -> None:
    doc["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"


def _for_in_words(doc: dict[str, Any]) -> None:
    doc["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"


@pytest.mark.parametrize(("kind", "breaking"), [
    ("PodMonitor", _misspelt_relabeling),
    ("PodMonitor", _interval_in_words),
    ("PrometheusRule", _for_in_words),
], ids=["misspelt-relabeling", "interval-in-words", "for-in-words"])
def test_the_structural_check_refuses_a_broken_field(
        kind: str, breaking: Callable[[dict[str, Any]], None]) -> None:
    """The check above can fail: a misspelt relabeling key or a duration that is not one."""
    broken = copy.deepcopy(one(RENDERED, kind))
    breaking(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMAS[kind])


def test_the_component_adds_only_the_operators_objects() -> None:
    """The overlay renders the base unchanged, plus one PodMonitor and one PrometheusRule in
    the DaemonSet's namespace."""
    added = [doc for doc in RENDERED if doc["kind"] in OPERATOR_KINDS]
    assert sorted(doc["kind"] for doc in added) == sorted(OPERATOR_KINDS)
    assert [doc for doc in RENDERED if doc["kind"] not in OPERATOR_KINDS] == kustomize(MANIFESTS)
    namespace = one(RENDERED, "DaemonSet")["metadata"]["namespace"]
    assert {doc["metadata"]["namespace"] for doc in added} == {namespace}


def test_the_pod_monitor_scrapes_each_pod_and_names_its_node() -> None:
    """It selects the DaemonSet's pods, scrapes the container's metrics port on the path
    the pods announce, takes `job` from a label the pods carry, and copies the pod's node
    name into `node` (the label the alerts name the node by)."""
    monitor = one(RENDERED, "PodMonitor")["spec"]
    template = one(RENDERED, "DaemonSet")["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["jobLabel"] in labels
    [endpoint] = monitor["podMetricsEndpoints"]
    [container] = template["spec"]["containers"]
    assert endpoint["port"] in {port["name"] for port in container["ports"]}
    assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"]
    assert {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_node_name"],
            "targetLabel": "node"} in endpoint["relabelings"]
