#!/usr/bin/env bash
# docs/benchmarks.md as committed: `fedgma bench` with the imports table measured against
# 35abdab, the last commit before the round loop polled for replies itself and the library
# packages imported lazily. Other arguments go to `fedgma bench` (e.g. --parts imports, --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m fedgma bench --before 35abdab "$@"
