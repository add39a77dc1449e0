#!/bin/bash
# TLS material for the ccaas server (server cert for 127.0.0.1) and the peer's client cert, one throwaway CA.
set -euo pipefail
. "$(dirname "$0")/env.sh"
D=$NET/cctls; rm -rf "$D"; mkdir -p "$D"; cd "$D"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=ccaas-test-ca" -out ca.crt \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
for n in server client; do
  openssl ecparam -name prime256v1 -genkey -noout -out $n.key.ec
  openssl pkcs8 -topk8 -nocrypt -in $n.key.ec -out $n.key; chmod 600 $n.key
  openssl req -new -key $n.key -subj "/CN=ccaas-$n" -out $n.csr
  if [ $n = server ]; then EXT="subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"; else EXT="extendedKeyUsage=clientAuth"; fi
  printf "$EXT\nkeyUsage=critical,digitalSignature\n" > $n.ext
  openssl x509 -req -in $n.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -sha256 -extfile $n.ext -out $n.crt
done
ls "$D"
