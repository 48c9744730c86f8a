#!/usr/bin/env bash
# Make SuperNode authentication keys (ECDSA P-384, as Flower requires).
#   scripts/make-supernode-keys.sh DIR N
# Writes DIR/supernode-0 .. DIR/supernode-(N-1) (private: stays on the client host) and the
# matching .pub files (register each on the server: `flwr supernode register DIR/supernode-I.pub`).
# Existing keys are kept, so re-running never invalidates registered SuperNodes.
set -euo pipefail
dir=${1:?usage: $0 DIR N}
count=${2:?usage: $0 DIR N}
mkdir -p "$dir"
for ((i = 0; i < count; i++)); do
    key="$dir/supernode-$i"
    [ -f "$key" ] || ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedgma-supernode-$i" -f "$key"
    chmod 644 "$key.pub"
done
echo "SuperNode keys in $dir: supernode-0 .. supernode-$((count - 1)) (+ .pub)"
