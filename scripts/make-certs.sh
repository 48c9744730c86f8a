#!/usr/bin/env bash
# Make a private CA and a SuperLink certificate for TLS.
#   scripts/make-certs.sh [--ca-key FILE] DIR [NAME_OR_IP ...]
# The certificate's subject alternative names: localhost, 127.0.0.1 and every NAME_OR_IP
# given (the addresses SuperNodes and `flwr` use to reach the SuperLink).
# Writes DIR/ca.crt (give to SuperNodes and `flwr`), DIR/server.pem and DIR/server.key (for the
# SuperLink), and the CA's private key to FILE (default DIR/ca.key): keep it off every server,
# it can sign certificates that SuperNodes and `flwr` trust.
set -euo pipefail
ca_key=
if [ "${1:-}" = --ca-key ]; then ca_key=${2:?usage: $0 [--ca-key FILE] DIR [NAME_OR_IP ...]}; shift 2; fi
dir=${1:?usage: $0 [--ca-key FILE] DIR [NAME_OR_IP ...]}
shift
ca_key=${ca_key:-$dir/ca.key}
mkdir -p "$dir" "$(dirname "$ca_key")"
sans="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then sans+=",IP:$name"; else sans+=",DNS:$name"; fi
done
(umask 077
 openssl req -x509 -newkey rsa:4096 -nodes -days 365 -subj "/CN=FedGMA CA" \
     -keyout "$ca_key" -out "$dir/ca.crt" 2>/dev/null
 openssl req -newkey rsa:4096 -nodes -subj "/CN=${1:-localhost}" \
     -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null)
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$ca_key" -CAcreateserial \
    -CAserial "$dir/ca.srl" -days 365 -extfile <(printf "subjectAltName=%s\n" "$sans") \
    -out "$dir/server.pem" 2>/dev/null
rm -f "$dir/server.csr" "$dir/ca.srl"
chmod 600 "$ca_key" "$dir/server.key"
chmod 644 "$dir/ca.crt" "$dir/server.pem"
echo "certificates in $dir (SANs: $sans), CA key in $ca_key"
