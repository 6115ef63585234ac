#!/usr/bin/env bash
# A throw-away certificate authority and a server certificate for 127.0.0.1 and localhost,
# for trying TLS on loopback (the Kafka TLS test puts a TLS listener in front of Tansu with
# them). Never for production: the CA's key sits next to it, unprotected.
#   tls-ca.sh DIR   writes DIR/ca.pem, DIR/ca.key, DIR/server.pem, DIR/server.key
set -euo pipefail
dir=${1:?usage: tls-ca.sh DIR}
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 7 -subj "/CN=cxstream throw-away CA" \
  -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=127.0.0.1" \
  -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 7 \
  -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
echo "tls-ca: $dir/ca.pem (CA), $dir/server.pem and $dir/server.key (127.0.0.1, localhost)"
