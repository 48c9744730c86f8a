#!/usr/bin/env bash
# The main job: FedGMA vs FedAvg on Flower's simulation runtime (set-up included).
# Arguments go to `fedgma demo` (e.g. --rounds 10, or run settings key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m fedgma demo "$@"
