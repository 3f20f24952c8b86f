"""Runs `switchyard <role> <rendered args> --check-config` for every rendered container.

Each container gets a sandbox directory standing in for its volumes (ConfigMap files with their
rendered text, Secret items with a throwaway certificate and key), its file arguments rewritten
into it, and `$(VAR)` references replaced as the kubelet would (downward-API values by dummies).
The binary loads config and flags and exits without binding ports or touching the network.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from typing import Any

from .checks import switchyard_containers
from .render import Release, pod_spec

DUMMY_ENV = {"POD_IP": "127.0.0.1", "POD_NAME": "demo-epp-0", "ETCD_USER": "user", "ETCD_PASSWORD": "password"}
TIMEOUT_S = 30


def supports_check_config(binary: str) -> str | None:
    """None when the binary has what the chart passes; else why the binary step is skipped."""
    try:
        help_text = subprocess.run(
            [binary, "standalone", "--help"], capture_output=True, text=True, timeout=TIMEOUT_S
        ).stdout
    except OSError as e:
        return f"cannot run {binary}: {e}"
    missing = [f for f in ("--check-config", "--pool-name") if f not in help_text]
    return f"{binary} has no {', '.join(missing)} yet" if missing else None


def _sandbox(rel: Release, workload: dict[str, Any], container: dict[str, Any], root: str) -> dict[str, str]:
    """Writes the container's mounts under root; returns mountPath -> sandbox path."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    configmaps = {c["metadata"]["name"]: c for c in rel.of_kind("ConfigMap")}
    mapping = {}
    for m in container.get("volumeMounts", []):
        target = os.path.join(root, m["mountPath"].lstrip("/"))
        os.makedirs(target, exist_ok=True)
        vol = volumes[m["name"]]
        if "configMap" in vol:
            for key, text in configmaps[vol["configMap"]["name"]].get("data", {}).items():
                with open(os.path.join(target, key), "w") as f:
                    f.write(text)
        elif "secret" in vol:
            for item in vol["secret"].get("items", []):
                with open(os.path.join(target, item["path"]), "w") as f:
                    f.write(_secret_text(item["key"]))
        mapping[m["mountPath"]] = target
    return mapping


@functools.cache
def _pem_pair() -> tuple[str, str] | None:
    """A throwaway self-signed certificate and key, so a binary that parses the mounted PEM
    files accepts them (None without openssl: placeholders then)."""
    with tempfile.TemporaryDirectory(prefix="chart-check-pem-") as d:
        crt, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        try:
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", key, "-out", crt, "-subj", "/CN=chart-check", "-days", "1"],
                capture_output=True, check=True, timeout=TIMEOUT_S,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return open(crt).read(), open(key).read()


def _secret_text(key: str) -> str:
    pair = _pem_pair()
    if pair and key in ("tls.crt", "ca.crt"):
        return pair[0]
    if pair and key == "tls.key":
        return pair[1]
    return f"placeholder for Secret key {key}\n"


def _env(rel: Release, container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "fieldRef" in e.get("valueFrom", {}):
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            env[e["name"]] = rel.namespace if path == "metadata.namespace" else DUMMY_ENV.get(e["name"], "dummy")
        else:
            env[e["name"]] = DUMMY_ENV.get(e["name"], "dummy")
    return env


def _expand(arg: str, env: dict[str, str], mapping: dict[str, str]) -> str:
    arg = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)
    name, eq, value = arg.partition("=")
    for mount, target in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
        if eq and (value == mount or value.startswith(mount.rstrip("/") + "/")):
            return f"{name}={target}{value[len(mount):]}"
    return arg


def run(binary: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return subprocess.run(
        [binary, *args, "--check-config"], capture_output=True, text=True, timeout=TIMEOUT_S, env={**base, **env}
    )


def check_args(binary: str, rel: Release) -> tuple[list[str], int]:
    """Problems, and how many containers the binary accepted."""
    problems, accepted = [], 0
    for workload, container, role in switchyard_containers(rel):
        with tempfile.TemporaryDirectory(prefix="chart-check-") as root:
            mapping = _sandbox(rel, workload, container, root)
            env = _env(rel, container)
            args = [_expand(a, env, mapping) for a in container["args"]]
            done = run(binary, args, env)
        if done.returncode != 0:
            msg = (done.stderr or done.stdout).strip().splitlines()
            problems.append(f"{role}: `switchyard {' '.join(container['args'])} --check-config` exited "
                            f"{done.returncode}: {' | '.join(msg[-5:])}")
        else:
            accepted += 1
    return problems, accepted


def rejects_unknown_flag(binary: str) -> str | None:
    """The binary step is not vacuous: a flag no role has must fail --check-config with 2."""
    done = run(binary, ["picker", "--no-such-flag=1"], {})
    if done.returncode != 2:
        return f"`switchyard picker --no-such-flag=1 --check-config` exited {done.returncode}, want 2"
    return None
