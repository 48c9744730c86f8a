#!/usr/bin/env bash
# The secrets docker-compose.yml mounts, under deploy/ (git-ignored):
#   deploy/certs: CA and SuperLink certificate (SANs: superlink, localhost, 127.0.0.1, and any
#                 extra NAME_OR_IP given), deploy/keys: SuperNode keys supernode-0..N-1.
#   scripts/make-deploy-secrets.sh [--supernodes N] [NAME_OR_IP ...]
# Keeps existing files (re-running does not invalidate certificates or registered keys).
set -euo pipefail
cd "$(dirname "$0")/.."
count=3
if [ "${1:-}" = --supernodes ]; then count=$2; shift 2; fi
if [ ! -f deploy/certs/server.pem ]; then
    bash scripts/make-certs.sh deploy/certs superlink "$@"
fi
bash scripts/make-supernode-keys.sh deploy/keys "$count"
