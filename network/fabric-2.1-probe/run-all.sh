#!/bin/bash
# end-to-end: network up, ccaas deploy, serve, invoke; leaves processes running (stop.sh stops them)
set -euo pipefail
S=$(cd "$(dirname "$0")" && pwd)
. "$S/env.sh"
"$S/setup.sh"
"$S/start-orderer.sh"; sleep 5
"$S/start-peer.sh"; sleep 5
"$S/channel.sh"
# start the server before commit so the peer's launch at commit time succeeds; the package id
# equals <label>:sha256(package file), known before install
AFTER_INSTALL="$S/start-ccaas.sh" "$S/deploy-ccaas.sh"
sleep 2
"$S/invoke.sh"
# second chaincode over mutual TLS (connection.json tls_required + client_auth_required)
if [ "${WITH_TLS:-1}" = 1 ]; then
  "$S/gen-ccaas-tls.sh"
  export CC_TLS_DIR=$NET/cctls CC_ADDR=127.0.0.1:9998 LABEL=ehrshare_tls CC_NAME=ehrshare-tls
  AFTER_INSTALL="$S/start-ccaas.sh" "$S/deploy-ccaas.sh"
  sleep 2
  "$S/invoke.sh"
fi
