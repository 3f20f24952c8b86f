"""Checks for the Switchyard Helm chart (deploy/charts/switchyard).

- render: Helm's engine (helm-python-sdk) renders the chart into plain objects, lints it and
  reports schema errors; nothing here talks to a cluster or the network.
- checks: what every rendered release must satisfy (args, ports, probes, Services, RBAC,
  securityContext, etcd, the EndpointPickerConfig).
- binary: runs `switchyard <role> <rendered args> --check-config` for every rendered container.
- repo: the Dockerfile (hadolint, toolchain pin), docs/install.md covering every value and flag.
- cli: the matrix of cases and the negative cases; the entry point.
"""
