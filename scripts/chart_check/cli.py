"""The entry point: every modelServerType x {standalone, distributed} x {external, in-chart etcd},
a few variants, the values the chart must refuse, helm lint, and the repository checks.

Exit status 0 when every check passes, 1 otherwise (each problem printed on its own line).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import Any

from . import binary, checks, render, repo

ENGINES = ("vllm", "sglang", "triton-tensorrt-llm", "trtllm-serve")

# The list form the Triton and SGLang guides show (an empty value disables that metric), and
# upstream's newer map form.
TRITON_FLAGS = [
    {"name": "total-queued-requests-metric", "value": "nv_trt_llm_request_metrics{request_type=waiting}"},
    {"name": "kv-cache-usage-percentage-metric", "value": "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}"},
    {"name": "lora-info-metric", "value": ""},
]
SGLANG_FLAGS = [
    {"name": "total-queued-requests-metric", "value": "sglang:num_queue_reqs"},
    {"name": "kv-cache-usage-percentage-metric", "value": "sglang:token_usage"},
    {"name": "lora-info-metric", "value": ""},
]
# Flags of every routing group (docs/install.md), so a misrouted one fails --check-config.
VLLM_FLAGS = {"v": 3, "zap-encoder": "console", "tracing": False,
              "max-request-body-bytes": 16777216, "metrics-staleness-threshold": "2s", "seed": 7,
              "request-body-timeout": "60s", "max-request-header-bytes": 131072, "handshake-timeout": "10s",
              "disable-endpoint-subset-filter": True, "inference-objective": "critical=10",
              "refresh-metrics-interval": "50ms", "cache-info-metric": "vllm:cache_config_info",
              "model-server-metrics-scheme": "http", "model-server-metrics-path": "/metrics",
              "model-server-metrics-port": 8000, "model-server-metrics-https-insecure-skip-verify": True}
FLAGS = {"vllm": VLLM_FLAGS, "sglang": SGLANG_FLAGS, "triton-tensorrt-llm": TRITON_FLAGS, "trtllm-serve": {}}

EXTERNAL_ETCD = {
    "endpoints": ["https://etcd-0.etcd.example:2379", "https://etcd-1.etcd.example:2379"],
    "tls": {"enabled": True, "secretName": "etcd-client-tls"},
    "auth": {"secretName": "etcd-auth"},
}


def matrix() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for i, engine in enumerate(ENGINES):
        for mode in ("standalone", "distributed"):
            for etcd in ("external", "in-chart"):
                external = copy.deepcopy(EXTERNAL_ETCD)
                external["tls"]["clientCert"] = i % 2 == 1
                values: dict[str, Any] = {
                    "mode": mode,
                    "inferencePool": {"modelServerType": engine, "endpointSelector": engine == "trtllm-serve"},
                    "inferenceExtension": {"flags": FLAGS[engine]},
                    "scraper": {"enabled": i % 2 == 0},
                    "etcd": {"deploy": True} if etcd == "in-chart" else external,
                }
                if engine == "triton-tensorrt-llm":
                    values["inferenceExtension"]["tls"] = {"secretName": "epp-tls"}
                cases.append((f"{engine} {mode} {etcd}-etcd", values))
    custom = ("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
              "- type: queue-scorer\n- type: core-metrics-extractor\n  parameters:\n    defaultEngine: sglang\n")
    cases.append(("custom config, picker without HPA", {
        "mode": "distributed", "etcd": {"deploy": True},
        # No CPU request (no HPA needs one): the runtime then sizes itself, no TOKIO_WORKER_THREADS.
        "picker": {"autoscaling": {"enabled": False}, "replicas": 3, "resources": {"requests": {"cpu": None}}},
        "inferenceExtension": {"pluginsConfigFile": "mine.yaml", "pluginsCustomConfig": {"mine.yaml": custom},
                               "secureServing": False},
    }))
    cases.append(("control-plane mTLS, remote scrapers", {
        "mode": "distributed", "etcd": {"deploy": True}, "scraper": {"enabled": True},
        "controlPlane": {"tls": {"secretName": "switchyard-control-plane"}},
    }))
    cases.append(("control-plane TLS not required, own server name", {
        "mode": "distributed", "etcd": {"deploy": True},
        "controlPlane": {"tls": {"secretName": "cp", "serverName": "aggregator.example", "require": False}},
    }))
    cases.append(("existing pool, default values otherwise", {"inferencePool": {"create": False, "name": "shared"}}))
    return cases


# (case, values, texts the error must contain)
REFUSED = [
    ("unknown key", {"inferencePool": {"modelServerTyp": "vllm"}}, ["modelServerTyp"]),
    ("unknown top-level key", {"inferenceExtention": {}}, ["inferenceExtention"]),
    ("bad modelServerType", {"inferencePool": {"modelServerType": "tgi"}}, list(ENGINES)),
    ("upstream HA flag", {"inferenceExtension": {"flags": {"ha-enable-leader-election": True}}},
     ["ha-enable-leader-election", "mode: distributed"]),
    ("chart-owned flag", {"inferenceExtension": {"flags": [{"name": "grpc-port", "value": 9100}]}},
     ["--grpc-port", "inferenceExtension.extProcPort"]),
    ("distributed without etcd", {"mode": "distributed"}, ["etcd.endpoints", "etcd.deploy"]),
    ("flag no distributed role takes", {"mode": "distributed", "etcd": {"deploy": True},
                                        "inferenceExtension": {"flags": {"enable-pprof": True}}}, ["--enable-pprof"]),
    ("in-chart etcd with TLS", {"mode": "distributed", "etcd": {"deploy": True, "tls": {"enabled": True}}},
     ["etcd.tls"]),
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(prog="chart-check", description=__doc__)
    p.add_argument("--repo", default=os.path.dirname(os.path.dirname(here)))
    p.add_argument("--bin", default=os.environ.get("SWITCHYARD_BIN"), help="switchyard binary (env SWITCHYARD_BIN)")
    p.add_argument("--skip-binary", action="store_true", help="do not run --check-config")
    p.add_argument("--require-binary", action="store_true", help="fail when the binary cannot run --check-config")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def same_args(chart: str) -> list[str]:
    """The list form and the map form of one set of flags render the same args (in any order)."""
    as_map = {f["name"]: f["value"] for f in TRITON_FLAGS}
    base = {"mode": "distributed", "etcd": {"deploy": True}, "scraper": {"enabled": True}}
    rendered = []
    for form in (TRITON_FLAGS, as_map):
        rel = render.render(chart, {**base, "inferenceExtension": {"flags": form}})
        rendered.append(sorted((c["args"][0], sorted(c["args"][1:])) for _, c, _ in checks.switchyard_containers(rel)))
    return [] if rendered[0] == rendered[1] else ["flags as a list and as a map render different args"]


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    chart = os.path.join(opts.repo, "deploy", "charts", "switchyard")
    problems: list[str] = []

    def report(name: str, found: list[str], note: str = "") -> None:
        problems.extend(f"{name}: {p}" for p in found)
        if opts.verbose or found:
            print(f"{'FAIL' if found else 'ok  '} {name}{note}")
            for p in found:
                print(f"     {p}")

    skip = "--skip-binary" if opts.skip_binary else None
    if skip is None:
        skip = "no --bin / SWITCHYARD_BIN" if not opts.bin else binary.supports_check_config(opts.bin)
    if skip and opts.require_binary:
        report("binary", [f"cannot run --check-config: {skip}"])
    elif skip:
        print(f"chart-check: binary step skipped ({skip})")
    else:
        found = binary.rejects_unknown_flag(opts.bin)
        report("binary rejects an unknown flag", [found] if found else [])

    accepted = 0
    for name, values in matrix():
        try:
            rel = render.render(chart, values)
        except Exception as e:  # a render error is this case's failure, not the run's end
            report(name, [f"does not render: {e}"])
            continue
        found = checks.check_release(rel) + repo.etcd_flags(rel) + repo.crds(rel)
        note = ""
        if not skip:
            bad, n = binary.check_args(opts.bin, rel)
            found += bad
            accepted += n
            note = f" ({n} containers pass --check-config)"
        report(name, found, note)

    for name, values, texts in REFUSED:
        err = render.render_error(chart, values)
        if err is None:
            report(f"refuses {name}", ["rendered"])
        else:
            report(f"refuses {name}", [f"error lacks {t!r}: {err}" for t in texts if t not in err])
    lint_unknown = render.lint(chart, {"inferencePool": {"modelServerTyp": "vllm"}})
    report("helm lint names an unknown key", [] if any("modelServerTyp" in m for m in lint_unknown) else
           [f"lint findings {lint_unknown}"])

    report("list and map flags", same_args(chart))
    report("helm lint (defaults)", render.lint(chart, None))
    report("helm lint (distributed)", render.lint(chart, {"mode": "distributed", "etcd": {"deploy": True},
                                                          "scraper": {"enabled": True}}))
    report("Dockerfile", repo.dockerfile(opts.repo))
    report("docs/install.md", repo.docs(opts.repo, chart))
    report("deploy/examples", repo.examples(opts.repo, render.default_values(chart), opts.bin))

    elapsed = time.monotonic() - started
    binary_note = f", {accepted} containers accepted by --check-config" if not skip else ""
    if problems:
        print(f"chart-check: {len(problems)} problems ({elapsed:.1f} s{binary_note})")
        return 1
    print(f"chart-check: all checks passed ({len(matrix())} releases{binary_note}, {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
