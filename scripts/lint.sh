#!/usr/bin/env bash
# The gates CI runs before the tests: ruff and mypy (configured in pyproject.toml), zero findings.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/ruff ] || bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
