"""Helm's engine over the chart: a release rendered to plain objects, lint findings, the CRDs.

Uses helm-python-sdk (Helm v4 as a native library): no helm binary, no cluster, no network.
Does not judge the objects (checks.py does).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import helm_python as helm
import yaml

RELEASE = "demo"
NAMESPACE = "llm"


@dataclasses.dataclass
class Release:
    """One rendered release: the values it used (defaults merged) and its objects."""

    values: dict[str, Any]
    objects: list[dict[str, Any]]
    crds: list[dict[str, Any]]
    name: str = RELEASE
    namespace: str = NAMESPACE

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def workloads(self) -> list[dict[str, Any]]:
        return self.of_kind("Deployment") + self.of_kind("StatefulSet")

    def component(self, name: str) -> dict[str, Any] | None:
        """The workload whose pods carry app.kubernetes.io/component=name."""
        for w in self.workloads():
            if pod_labels(w).get("app.kubernetes.io/component") == name:
                return w
        return None


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def render(chart_dir: str, values: dict[str, Any] | None) -> Release:
    """Renders like `helm template` (schema validated first). Raises helm.HelmError."""
    with helm.Chart.load(chart_dir) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        merged = chart.merge_values(values)
        crds = [doc for c in chart.crds for doc in yaml.safe_load_all(c["data"]) if doc]
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                doc["metadata"].setdefault("annotations", {})
                doc["__template__"] = path
                objects.append(doc)
    return Release(values=merged, objects=objects, crds=crds)


def render_error(chart_dir: str, values: dict[str, Any] | None) -> str | None:
    """The error rendering `values` fails with, or None when it renders."""
    try:
        render(chart_dir, values)
    except helm.HelmError as e:
        return str(e)
    return None


def lint(chart_dir: str, values: dict[str, Any] | None) -> list[str]:
    """`helm lint --strict` findings of warning level or worse, as text."""
    report = helm.lint(chart_dir, values, strict=True, namespace=NAMESPACE)
    bad = [f"{m['path']}: {m['error'].strip()}" for m in report["messages"] if m["severity"] >= 2]
    return bad + [e.strip() for e in report.get("errors", []) if e.strip() and e.strip() not in " ".join(bad)]


def default_values(chart_dir: str) -> dict[str, Any]:
    with helm.Chart.load(chart_dir) as chart:
        return chart.values
