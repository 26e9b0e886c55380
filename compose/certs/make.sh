#!/bin/sh
# Makes NATS certificates once: a CA and one server certificate for the members. Run by the compose
# cluster's `certs` service into its volume (members nats-1..3); NATS serves with them and every
# gateway trusts the CA (OCIS_CACHE_TLS_ROOT_CA_CERTIFICATE). For nats/conf: `make.sh certs n1 n2 n3`.
# For a real deployment use your own CA and one key per server.
# Usage: make.sh [<dir> [<member name> ...]]   (default: /certs nats-1 nats-2 nats-3)
set -eu
out=${1:-/certs}
[ $# -gt 0 ] && shift
names=${*:-nats-1 nats-2 nats-3}
if [ -s "$out/ca.pem" ] && [ -s "$out/server.pem" ]; then
  echo "certificates already in $out"
  exit 0
fi
command -v openssl >/dev/null || apk add --no-cache openssl >/dev/null
mkdir -p "$out"
cd "$out"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=gatehouse compose NATS CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=nats" -keyout server-key.pem -out server.csr 2>/dev/null
sans=""
for n in $names; do sans="${sans}DNS:$n,"; done
printf 'subjectAltName=%sDNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' "$sans" > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
  -extfile ext.cnf -out server.pem 2>/dev/null
rm -f server.csr ext.cnf ca.srl ca-key.pem
# The NATS and gateway containers run as other users than this one.
chmod 644 ca.pem server.pem server-key.pem
echo "certificates written to $out"
