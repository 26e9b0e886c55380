#!/bin/sh
# Makes the compose cluster's NATS certificates once: a CA and one server certificate for the
# three members (nats-1..3). Run by the `certs` service into its volume; NATS serves with them and
# every gateway trusts the CA (OCIS_CACHE_TLS_ROOT_CA_CERTIFICATE). For a real deployment use your
# own CA and one key per server.
set -eu
out=${1:-/certs}
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
printf 'subjectAltName=DNS:nats-1,DNS:nats-2,DNS:nats-3,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
  -extfile ext.cnf -out server.pem 2>/dev/null
rm -f server.csr ext.cnf ca.srl ca-key.pem
# The NATS and gateway containers run as other users than this one.
chmod 644 ca.pem server.pem server-key.pem
echo "certificates written to $out"
