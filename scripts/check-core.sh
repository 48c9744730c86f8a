#!/usr/bin/env bash
# The core install on its own: the library (fedgma.strategy, fedgma.loop) into a fresh
# virtualenv with the given Flower and no torch, then the library's tests (tests/library/) against it.
# Usage: scripts/check-core.sh [FLWR_REQUIREMENT]   (default: flwr==1.42.*; needs PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."
FLWR=${1:-"flwr==1.42.*"}
PYTHON=${PYTHON:-python3.11}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$PWD" "$FLWR" "pytest>=8"
# From tests/, so that `fedgma` is the installed package, not the source tree.
cd tests
"$work/venv/bin/python" - <<'PY'
import importlib.metadata as m
import importlib.util as u
import fedgma
assert u.find_spec("torch") is None and u.find_spec("torchvision") is None, "torch was installed"
print(f"core install: fedgma from {fedgma.__file__}, flwr {m.version('flwr')}, numpy {m.version('numpy')}, no torch")
PY
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider library
