"""What every rendered release of the chart must satisfy; each check returns its problems as text.

Covers: the workloads a mode renders, each role's args (ports, files, env references, flags only
the right roles get), ports <-> probes <-> Services <-> the InferencePool, RBAC, ServiceAccount
tokens, securityContext, PDBs and anti-affinity, etcd, and the EndpointPickerConfig. Does not run
the binary (binary.py) or look at the repository's other files (repo.py).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from .render import Release, pod_labels, pod_spec

BINARY = "/usr/local/bin/switchyard"
SWITCHYARD_ROLES = ("standalone", "aggregator", "picker", "scraper")
DISCOVERY_ROLES = ("standalone", "aggregator")
PORT_FLAGS = ("grpc-port", "grpc-health-port", "metrics-port", "control-port")
FILE_FLAGS = ("config-file", "etcd-ca-file", "etcd-cert-file", "etcd-key-file", "cert-path", "control-plane-cert",
              "control-plane-key", "control-plane-ca")
CONTROL_TLS_FILES = ("control-plane-cert", "control-plane-key", "control-plane-ca")
POOL_FLAGS = ("pool-name", "pool-namespace", "pool-group", "endpoint-selector", "endpoint-target-ports")
ETCD_FLAGS = ("etcd-endpoints", "election-name", "lease-ttl")
DISCOVERY_RULES = {
    ("", "pods"),
    ("inference.networking.k8s.io", "inferencepools"),
    ("inference.networking.x-k8s.io", "inferenceobjectives"),
}
READ_VERBS = {"get", "list", "watch"}


def flags(args: list[str]) -> dict[str, list[str | None]]:
    """`--name=value` / `--name` args by name (a name may repeat)."""
    out: dict[str, list[str | None]] = {}
    for a in args[1:]:
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            out.setdefault(name, []).append(value if eq else None)
    return out


def one(fl: dict[str, list[str | None]], name: str) -> str | None:
    values = fl.get(name) or [None]
    return values[0]


def switchyard_containers(rel: Release):
    """(workload, container, role) for every Switchyard container."""
    for w in rel.workloads():
        for c in pod_spec(w)["containers"]:
            if c.get("command", [None])[0] == BINARY or c.get("image", "").startswith(rel.values["image"]["repository"] + ":"):
                role = (c.get("args") or [""])[0]
                yield w, c, role


def check_release(rel: Release) -> list[str]:
    problems: list[str] = []
    for check in (
        check_metadata,
        check_topology,
        check_containers,
        check_services,
        check_pool,
        check_rbac,
        check_security,
        check_disruption,
        check_etcd,
        check_config,
    ):
        problems += [f"{check.__name__}: {p}" for p in check(rel)]
    return problems


def check_metadata(rel: Release) -> list[str]:
    out, seen = [], set()
    for o in rel.objects:
        key = (o.get("apiVersion"), o.get("kind"), o["metadata"].get("name"))
        if None in key:
            out.append(f"{o['__template__']}: object without apiVersion, kind or name")
        if key in seen:
            out.append(f"two {key[1]} objects named {key[2]}")
        seen.add(key)
        if o["metadata"].get("namespace") != rel.namespace:
            out.append(f"{key[1]} {key[2]}: namespace {o['metadata'].get('namespace')!r}, want {rel.namespace!r}")
        for k in ("ClusterRole", "ClusterRoleBinding"):
            if o["kind"] == k:
                out.append(f"{k} {key[2]}: the chart needs namespaced permissions only")
    return out


def check_topology(rel: Release) -> list[str]:
    v, out = rel.values, []
    distributed = v["mode"] == "distributed"
    want = {"aggregator", "picker"} if distributed else {"standalone"}
    if distributed and v["scraper"]["enabled"]:
        want.add("scraper")
    if distributed and v["etcd"]["deploy"]:
        want.add("etcd")
    have = {pod_labels(w).get("app.kubernetes.io/component") for w in rel.workloads()}
    if have != want:
        out.append(f"workload components {sorted(have)}, want {sorted(want)}")
    hpas = rel.of_kind("HorizontalPodAutoscaler")
    if distributed and v["picker"]["autoscaling"]["enabled"]:
        picker = rel.component("picker")
        if len(hpas) != 1 or picker is None:
            return out + ["mode distributed needs one HPA for the picker Deployment"]
        hpa = hpas[0]["spec"]
        if hpa["scaleTargetRef"] != {"apiVersion": "apps/v1", "kind": "Deployment", "name": picker["metadata"]["name"]}:
            out.append(f"HPA targets {hpa['scaleTargetRef']}, not the picker Deployment")
        if [m["resource"]["name"] for m in hpa["metrics"]] != ["cpu"]:
            out.append("the picker HPA must scale on CPU")
        if "replicas" in picker["spec"]:
            out.append("the picker Deployment sets replicas although the HPA owns them")
        for c in pod_spec(picker)["containers"]:
            if "cpu" not in c.get("resources", {}).get("requests", {}):
                out.append("picker containers need a CPU request for the HPA's utilization")
    elif hpas:
        out.append("HPA rendered without mode distributed and picker.autoscaling.enabled")
    if distributed:
        agg = rel.component("aggregator")
        if agg and agg["spec"]["replicas"] < 2:
            out.append("mode distributed should run 2+ aggregators")
    return out


def check_containers(rel: Release) -> list[str]:
    out = []
    roles = [r for _, _, r in switchyard_containers(rel)]
    if not roles:
        return ["no Switchyard container rendered"]
    configmaps = {c["metadata"]["name"]: c for c in rel.of_kind("ConfigMap")}
    for w, c, role in switchyard_containers(rel):
        where = f"{w['kind']} {w['metadata']['name']}"
        component = pod_labels(w).get("app.kubernetes.io/component")
        if role != component or role not in SWITCHYARD_ROLES:
            out.append(f"{where}: role {role!r} for component {component!r}")
        if c.get("command") != [BINARY]:
            out.append(f"{where}: command {c.get('command')}, want [{BINARY}] (the image's binary)")
        args = c.get("args", [])
        fl = flags(args)
        if "ha-enable-leader-election" in fl:
            out.append(f"{where}: --ha-enable-leader-election is refused by Switchyard (HA is mode distributed)")
        for name, values in fl.items():
            if len(values) > 1 and name != "inference-objective":
                out.append(f"{where}: --{name} given {len(values)} times")
        out += _env_refs(where, c, args)
        out += _worker_threads(where, c)
        out += _ports_and_probes(where, c, role, fl)
        out += _files(where, w, c, fl, configmaps)
        discovery = any(f in fl for f in POOL_FLAGS)
        if (role in DISCOVERY_ROLES) != discovery:
            out.append(f"{where}: pool discovery flags {'on' if discovery else 'missing from'} role {role}")
        if role in DISCOVERY_ROLES and ("pool-name" in fl) == ("endpoint-selector" in fl):
            out.append(f"{where}: exactly one of --pool-name and --endpoint-selector")
        has_etcd = "etcd-endpoints" in fl
        if has_etcd != (role != "standalone"):
            out.append(f"{where}: etcd flags {'on' if has_etcd else 'missing from'} role {role}")
        if role == "aggregator":
            adv = one(fl, "advertise-address") or ""
            if not adv.endswith(f":{one(fl, 'control-port')}") or "$(POD_IP)" not in adv:
                out.append(f"{where}: --advertise-address={adv!r} is not $(POD_IP):<control-port>")
            if ("remote-scrapers" in fl) != bool(rel.values["scraper"]["enabled"]):
                out.append(f"{where}: --remote-scrapers must follow scraper.enabled")
        if role == "scraper" and one(fl, "scraper-id") != "$(POD_NAME)":
            out.append(f"{where}: --scraper-id should be the pod name")
        out += _control_tls(where, role, fl, rel.values["controlPlane"]["tls"])
    return out


def _worker_threads(where: str, c: dict[str, Any]) -> list[str]:
    """The runtime is sized by the container's CPU request (TOKIO_WORKER_THREADS from the downward
    API, rounded up), and only when there is one: an unset request would read as 0 threads."""
    env = {e["name"]: e for e in c.get("env", [])}
    want = "cpu" in c.get("resources", {}).get("requests", {})
    got = env.get("TOKIO_WORKER_THREADS")
    if not want:
        return [f"{where}: TOKIO_WORKER_THREADS set without a CPU request"] if got else []
    ref = (got or {}).get("valueFrom", {}).get("resourceFieldRef", {})
    if ref.get("resource") != "requests.cpu" or str(ref.get("divisor")) != "1":
        return [f"{where}: TOKIO_WORKER_THREADS should come from requests.cpu with divisor 1, got {got}"]
    return []


def _control_tls(where: str, role: str, fl: dict[str, Any], tls: dict[str, Any]) -> list[str]:
    """controlPlane.tls reaches every distributed role: the files, the server name on the clients
    only (an aggregator refuses it), and require as set; standalone has no control port."""
    on = bool(tls["secretName"]) and role != "standalone"
    have = [f for f in CONTROL_TLS_FILES if f in fl]
    if have != (list(CONTROL_TLS_FILES) if on else []):
        return [f"{where}: control-plane TLS flags {have} for role {role} with secretName {tls['secretName']!r}"]
    out = []
    if ("control-plane-server-name" in fl) != (on and role != "aggregator"):
        out.append(f"{where}: --control-plane-server-name on role {role} (clients only, when TLS is on)")
    if ("control-plane-tls-require" in fl) != (on and tls["require"]):
        out.append(f"{where}: --control-plane-tls-require does not follow controlPlane.tls.require")
    return out


def _env_refs(where: str, c: dict[str, Any], args: list[str]) -> list[str]:
    defined = {e["name"] for e in c.get("env", [])}
    refs = {m for a in args for m in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a)}
    return [f"{where}: args use $({r}) but the container has no env {r}" for r in sorted(refs - defined)]


def _ports_and_probes(where: str, c: dict[str, Any], role: str, fl: dict[str, Any]) -> list[str]:
    out = []
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    numbers = set(ports.values())
    for name in PORT_FLAGS:
        if name in fl and int(one(fl, name) or 0) not in numbers:
            out.append(f"{where}: --{name}={one(fl, name)} has no containerPort")
    if len(numbers) != len(ports):
        out.append(f"{where}: two container ports share a number")
    want = {"standalone": ("grpc-port", "grpc-health-port", "metrics-port"),
            "picker": ("grpc-port", "grpc-health-port", "metrics-port"),
            "aggregator": ("control-port", "grpc-health-port", "metrics-port"),
            "scraper": ("metrics-port",)}.get(role, ())
    for name in want:
        if name not in fl:
            out.append(f"{where}: role {role} without --{name} (ports would silently follow the binary's defaults)")
    if {int(one(fl, n) or 0) for n in want if n in fl} != numbers:
        out.append(f"{where}: container ports {sorted(numbers)} are not exactly the role's port flags")
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = c.get(kind)
        if probe is None:
            if kind != "startupProbe":
                out.append(f"{where}: no {kind}")
            continue
        action = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket")
        port = action["port"] if action else None
        port = ports.get(port, port)
        if port not in numbers:
            out.append(f"{where}: {kind} port {action and action['port']} is not a container port")
        if role == "scraper":
            continue
        grpc = probe.get("grpc")
        health = int(one(fl, "grpc-health-port") or 0)
        if not grpc or grpc["port"] != health:
            out.append(f"{where}: {kind} must be a gRPC probe on --grpc-health-port={health}")
            continue
        service = grpc.get("service")
        ready = "liveness" if role == "aggregator" else "readiness"
        expect = ready if kind == "readinessProbe" else "liveness"
        if service != expect:
            out.append(f"{where}: {kind} on service {service!r}, want {expect!r}")
    return out


def _files(where: str, w: dict[str, Any], c: dict[str, Any], fl: dict[str, Any], configmaps: dict) -> list[str]:
    out = []
    volumes = {v["name"]: v for v in pod_spec(w).get("volumes", [])}
    mounts = c.get("volumeMounts", [])
    for m in mounts:
        if m["name"] not in volumes:
            out.append(f"{where}: mount {m['name']} has no volume")
    for name in FILE_FLAGS:
        path = one(fl, name)
        if path is None:
            continue
        mount = next((m for m in mounts if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")), None)
        if mount is None:
            out.append(f"{where}: --{name}={path} is not under a volume mount")
            continue
        vol = volumes.get(mount["name"], {})
        rest = path[len(mount["mountPath"]):].strip("/")
        if "configMap" in vol:
            cm = configmaps.get(vol["configMap"]["name"])
            if cm is None:
                out.append(f"{where}: volume {mount['name']} names a ConfigMap the chart does not render")
            elif rest not in cm.get("data", {}):
                out.append(f"{where}: --{name}={path}: ConfigMap {cm['metadata']['name']} has no key {rest!r}")
        elif "secret" in vol and rest:
            items = [i["path"] for i in vol["secret"].get("items", [])]
            if rest not in items:
                out.append(f"{where}: --{name}={path}: Secret volume items {items} lack {rest!r}")
        if not mount.get("readOnly"):
            out.append(f"{where}: mount {mount['name']} should be readOnly")
    return out


def _selected(rel: Release, selector: dict[str, str]) -> list[dict[str, Any]]:
    return [w for w in rel.workloads() if selector and all(pod_labels(w).get(k) == v for k, v in selector.items())]


def _target(workload: dict[str, Any], target) -> int | None:
    for c in pod_spec(workload)["containers"]:
        for p in c.get("ports", []):
            if target in (p["name"], p["containerPort"]):
                return p["containerPort"]
    return None


def check_services(rel: Release) -> list[str]:
    out = []
    for s in rel.of_kind("Service"):
        name = s["metadata"]["name"]
        selected = _selected(rel, s["spec"].get("selector", {}))
        if len(selected) != 1:
            out.append(f"Service {name} selects {len(selected)} workloads, want 1")
            continue
        for p in s["spec"]["ports"]:
            if _target(selected[0], p.get("targetPort", p["port"])) is None:
                out.append(f"Service {name} port {p['name']}: target {p.get('targetPort')} is no container port")
    distributed = rel.values["mode"] == "distributed"
    ext_proc = rel.component("picker" if distributed else "standalone")
    svc = [s for s in rel.of_kind("Service") if ext_proc and _selected(rel, s["spec"]["selector"]) == [ext_proc]]
    if not svc:
        out.append("no Service in front of the ext-proc pods")
    elif distributed and svc[0]["spec"].get("clusterIP") != "None":
        out.append("the picker Service must be headless so the gateway spreads streams over pickers")
    return out


def check_pool(rel: Release) -> list[str]:
    out, p = [], rel.values["inferencePool"]
    pools = rel.of_kind("InferencePool")
    if not (p["create"] and not p["endpointSelector"]):
        return [f"InferencePool rendered although {'endpointSelector' if p['endpointSelector'] else 'create: false'}"] if pools else []
    if len(pools) != 1:
        return [f"{len(pools)} InferencePools rendered, want 1"]
    pool = pools[0]
    if pool["apiVersion"] != "inference.networking.k8s.io/v1":
        out.append(f"InferencePool apiVersion {pool['apiVersion']}")
    spec = pool["spec"]
    if spec["selector"]["matchLabels"] != p["modelServers"]["matchLabels"]:
        out.append("InferencePool selector differs from inferencePool.modelServers.matchLabels")
    if [t["number"] for t in spec["targetPorts"]] != [t["number"] for t in p["targetPorts"]]:
        out.append("InferencePool targetPorts differ from inferencePool.targetPorts")
    ref = spec["endpointPickerRef"]
    svc = rel.get("Service", ref["name"])
    if ref.get("kind", "Service") != "Service" or svc is None:
        return out + [f"endpointPickerRef names Service {ref['name']}, which the chart does not render"]
    port = next((sp for sp in svc["spec"]["ports"] if sp["port"] == ref["port"]["number"]), None)
    selected = _selected(rel, svc["spec"]["selector"])
    if port is None or not selected:
        return out + [f"endpointPickerRef port {ref['port']['number']} is not a port of Service {ref['name']}"]
    target = _target(selected[0], port.get("targetPort", port["port"]))
    for _, c, role in switchyard_containers(rel):
        if role in ("standalone", "picker"):
            if target != int(one(flags(c["args"]), "grpc-port") or 0):
                out.append(f"endpointPickerRef reaches container port {target}, not the ext-proc --grpc-port")
            fl = flags(c["args"])
            if "pool-name" in fl and one(fl, "pool-name") != pool["metadata"]["name"]:
                out.append(f"--pool-name={one(fl, 'pool-name')} but the InferencePool is {pool['metadata']['name']}")
    return out


def check_rbac(rel: Release) -> list[str]:
    out = []
    for role in rel.of_kind("Role"):
        got = set()
        for rule in role["rules"]:
            if set(rule["verbs"]) != READ_VERBS or len(rule["verbs"]) != 3:
                out.append(f"Role {role['metadata']['name']}: verbs {rule['verbs']}, want exactly get/list/watch")
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    got.add((g, r))
        if got != DISCOVERY_RULES:
            out.append(f"Role {role['metadata']['name']}: resources {sorted(got)}, want {sorted(DISCOVERY_RULES)}")
    bound = set()
    for b in rel.of_kind("RoleBinding"):
        if rel.get("Role", b["roleRef"]["name"]) is None:
            out.append(f"RoleBinding {b['metadata']['name']} refers to a Role the chart does not render")
        bound |= {s["name"] for s in b["subjects"] if s["kind"] == "ServiceAccount"}
    accounts = {a["metadata"]["name"]: a for a in rel.of_kind("ServiceAccount")}
    for w in rel.workloads():
        spec, component = pod_spec(w), pod_labels(w).get("app.kubernetes.io/component")
        sa = spec.get("serviceAccountName")
        if component in DISCOVERY_ROLES:
            if sa not in bound:
                out.append(f"{component} runs as {sa!r}, which has no Role (it reads pods and the pool)")
        else:
            if sa in bound:
                out.append(f"{component} runs as {sa!r}, which holds Kubernetes permissions")
            if spec.get("automountServiceAccountToken") is not False:
                out.append(f"{component} pods must set automountServiceAccountToken: false")
            if sa is not None and accounts.get(sa, {}).get("automountServiceAccountToken") is not False:
                out.append(f"ServiceAccount {sa} of {component} must set automountServiceAccountToken: false")
        if sa is not None and sa not in accounts:
            out.append(f"{component} runs as ServiceAccount {sa}, which the chart does not render")
    if rel.of_kind("Role") and not bound:
        out.append("the discovery Role is bound to nobody")
    return out


def check_security(rel: Release) -> list[str]:
    out = []
    for w in rel.workloads():
        spec, name = pod_spec(w), w["metadata"]["name"]
        pod = spec.get("securityContext", {})
        if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            out.append(f"{name}: pod seccompProfile must be RuntimeDefault")
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            if not (sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True):
                out.append(f"{name}/{c['name']}: not runAsNonRoot")
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append(f"{name}/{c['name']}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                out.append(f"{name}/{c['name']}: readOnlyRootFilesystem must be true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                out.append(f"{name}/{c['name']}: capabilities must drop ALL")
            if sc.get("privileged"):
                out.append(f"{name}/{c['name']}: privileged")
            if not c.get("resources", {}).get("requests"):
                out.append(f"{name}/{c['name']}: no resource requests")
    return out


def check_disruption(rel: Release) -> list[str]:
    out = []
    covered = set()
    for pdb in rel.of_kind("PodDisruptionBudget"):
        selected = _selected(rel, pdb["spec"]["selector"]["matchLabels"])
        if len(selected) != 1:
            out.append(f"PDB {pdb['metadata']['name']} selects {len(selected)} workloads")
        covered |= {pod_labels(w)["app.kubernetes.io/component"] for w in selected}
    for w in rel.workloads():
        component = pod_labels(w)["app.kubernetes.io/component"]
        if component == "standalone":
            if component in covered:
                out.append("a PDB on the single standalone pod would block every node drain")
            continue
        if component not in covered:
            out.append(f"{component}: no PodDisruptionBudget")
        affinity = pod_spec(w).get("affinity", {})
        if not affinity.get("podAntiAffinity") and not rel.values.get(component, {}).get("affinity"):
            out.append(f"{component}: replicas are not spread (no podAntiAffinity)")
    return out


def check_etcd(rel: Release) -> list[str]:
    out, e = [], rel.values["etcd"]
    sts = rel.of_kind("StatefulSet")
    if rel.values["mode"] != "distributed":
        return ["etcd rendered in mode standalone"] if sts else []
    if e["deploy"]:
        if len(sts) != 1:
            return [f"{len(sts)} StatefulSets for the in-chart etcd, want 1"]
        s = sts[0]
        name, replicas = s["metadata"]["name"], s["spec"]["replicas"]
        svc = rel.get("Service", s["spec"]["serviceName"])
        if svc is None or svc["spec"].get("clusterIP") != "None" or not svc["spec"].get("publishNotReadyAddresses"):
            out.append("the etcd StatefulSet needs a headless Service publishing not-ready members")
        if s["spec"].get("podManagementPolicy") != "Parallel":
            out.append("etcd members must start in parallel (quorum before Ready)")
        want = [f"http://{name}-{i}.{name}.{rel.namespace}.svc:2379" for i in range(replicas)]
        args = s["spec"]["template"]["spec"]["containers"][0]["args"]
        cluster = one(flags(["etcd"] + args), "initial-cluster") or ""
        if cluster.count("=http://") != replicas:
            out.append(f"--initial-cluster names {cluster.count('=http://')} members, want {replicas}")
        pdb = next((p for p in rel.of_kind("PodDisruptionBudget") if p["metadata"]["name"] == name), None)
        if pdb is None or pdb["spec"].get("minAvailable") != replicas // 2 + 1:
            out.append(f"etcd PDB must keep quorum (minAvailable {replicas // 2 + 1})")
    else:
        if sts:
            out.append("etcd StatefulSet rendered with an external etcd")
        want = list(e["endpoints"])
    for w, c, role in switchyard_containers(rel):
        if role == "standalone":
            continue
        got = (one(flags(c["args"]), "etcd-endpoints") or "").split(",")
        if got != want:
            out.append(f"{role}: --etcd-endpoints {got}, want {want}")
        env = {x["name"] for x in c.get("env", [])}
        if bool(e["auth"]["secretName"]) and not e["deploy"] and not {"ETCD_USER", "ETCD_PASSWORD"} <= env:
            out.append(f"{role}: etcd.auth set but no ETCD_USER/ETCD_PASSWORD env")
    return out


def engine_config(rel: Release) -> tuple[str, dict[str, Any]] | None:
    """(file name, parsed EndpointPickerConfig) the roles load."""
    x = rel.values["inferenceExtension"]
    cm = rel.of_kind("ConfigMap")
    if not cm or x["pluginsConfigFile"] not in cm[0].get("data", {}):
        return None
    return x["pluginsConfigFile"], yaml.safe_load(cm[0]["data"][x["pluginsConfigFile"]])


def check_config(rel: Release) -> list[str]:
    found = engine_config(rel)
    if found is None:
        return ["the ConfigMap lacks inferenceExtension.pluginsConfigFile"]
    name, cfg = found
    out = []
    if cfg.get("apiVersion") != "inference.networking.x-k8s.io/v1alpha1" or cfg.get("kind") != "EndpointPickerConfig":
        out.append(f"{name}: not an EndpointPickerConfig")
    if name in rel.values["inferenceExtension"]["pluginsCustomConfig"]:
        return out
    extractors = [p for p in cfg.get("plugins", []) if p.get("type") == "core-metrics-extractor"]
    engine = extractors[0].get("parameters", {}).get("defaultEngine") if extractors else None
    want = rel.values["inferencePool"]["modelServerType"]
    if engine != want:
        out.append(f"{name}: defaultEngine {engine!r}, want inferencePool.modelServerType {want!r}")
    return out
