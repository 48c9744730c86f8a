#!/usr/bin/env bash
# What docker-compose.yml mounts, under deploy/ (git-ignored), and the outputs folder:
#   deploy/certs: ca.crt, server.pem, server.key (SANs: superlink, localhost, 127.0.0.1, and any
#                 extra NAME_OR_IP given); deploy/keys: SuperNode keys supernode-0..N-1 (+ .pub)
#                 and superexec-0..N-1, the secret each SuperNode shares with its SuperExec;
#   deploy/ca/ca.key: the CA's private key, which no container ever sees;
#   outputs/: where the SuperLink writes each run's results.
#   scripts/make-deploy-secrets.sh [--supernodes N] [NAME_OR_IP ...]
# The containers run as uid 49999 (as Flower's own images do). Run as root, the script gives
# that uid the private keys the containers read (mode 0400) and the outputs folder; otherwise it
# prints the commands that do. Keeps existing files (re-running does not invalidate
# certificates or registered keys).
set -euo pipefail
cd "$(dirname "$0")/.."
count=3
if [ "${1:-}" = --supernodes ]; then count=$2; shift 2; fi
app_uid=${FEDGMA_UID:-49999}
outputs=${FEDGMA_OUTPUTS:-outputs}
if [ ! -f deploy/certs/server.pem ]; then
    bash scripts/make-certs.sh --ca-key deploy/ca/ca.key deploy/certs superlink "$@"
fi
bash scripts/make-supernode-keys.sh deploy/keys "$count"
chmod 700 deploy/ca
mkdir -p "$outputs"
private=(deploy/certs/server.key)
for ((i = 0; i < count; i++)); do
    secret=deploy/keys/superexec-$i
    if [ ! -s "$secret" ]; then (umask 077; head -c 32 /dev/urandom > "$secret"); fi
    private+=("deploy/keys/supernode-$i" "$secret")
done
if [ "$(id -u)" = 0 ]; then
    chown "$app_uid:$app_uid" "${private[@]}" "$outputs"
    chmod 400 "${private[@]}"
    echo "private keys and $outputs/ belong to uid $app_uid (the containers' user)"
else
    echo "not root: the containers (uid $app_uid) cannot read the private keys yet. Run:" >&2
    echo "  sudo chown $app_uid:$app_uid ${private[*]} $outputs && sudo chmod 400 ${private[*]}" >&2
fi
