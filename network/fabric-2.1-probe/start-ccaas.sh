#!/bin/bash
# start the project's chaincode server with the installed package id
set -euo pipefail
. "$(dirname "$0")/env.sh"
EHRSHARE=${EHRSHARE:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/ehrshare}
TLSARGS=""; SUFFIX=""
[ -n "${CC_TLS_DIR:-}" ] && TLSARGS="--tls-cert $CC_TLS_DIR/server.crt --tls-key $CC_TLS_DIR/server.key --client-ca $CC_TLS_DIR/ca.crt" && SUFFIX=-tls
nohup "$EHRSHARE" chaincode serve --package-id "$(cat $NET/package_id.${LABEL:-ehrshare_1})" --listen ${CC_ADDR:-127.0.0.1:9999} $TLSARGS > "$NET/ccaas${SUFFIX:-}.log" 2>&1 &
echo $! > "$NET/ccaas$SUFFIX.pid"; echo "ccaas pid $(cat $NET/ccaas$SUFFIX.pid)"
