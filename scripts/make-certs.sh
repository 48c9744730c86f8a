#!/usr/bin/env bash
# Make a private CA and a SuperLink certificate for TLS.
#   scripts/make-certs.sh DIR [NAME_OR_IP ...]
# The certificate's subject alternative names: localhost, 127.0.0.1 and every NAME_OR_IP
# given (the addresses SuperNodes and `flwr` use to reach the SuperLink).
# Writes DIR/ca.crt (give to SuperNodes and `flwr`), DIR/ca.key (keep private),
# DIR/server.pem and DIR/server.key (for the SuperLink).
set -euo pipefail
dir=${1:?usage: $0 DIR [NAME_OR_IP ...]}
shift
mkdir -p "$dir"
sans="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then sans+=",IP:$name"; else sans+=",DNS:$name"; fi
done
openssl req -x509 -newkey rsa:4096 -nodes -days 365 -subj "/CN=FedGMA CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
openssl req -newkey rsa:4096 -nodes -subj "/CN=${1:-localhost}" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 365 -extfile <(printf "subjectAltName=%s\n" "$sans") -out "$dir/server.pem" 2>/dev/null
rm -f "$dir/server.csr" "$dir/ca.srl"
chmod 600 "$dir/ca.key" "$dir/server.key"
echo "certificates in $dir (SANs: $sans)"
