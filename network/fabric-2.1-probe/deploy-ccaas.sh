#!/bin/bash
# Package ehrshare as a ccaas chaincode (connection.json -> ehrshare chaincode serve), install, approve, commit.
set -euo pipefail
. "$(dirname "$0")/env.sh"; cli_env
CC_ADDR=${CC_ADDR:-127.0.0.1:9999}
LABEL=${LABEL:-ehrshare_1}
W=$NET/ccpkg-$LABEL; rm -rf "$W"; mkdir -p "$W/src"
if [ -n "${CC_TLS_DIR:-}" ]; then  # mutual TLS: root_cert = CA of the server cert; client cert/key for the peer
  python3 - "$CC_ADDR" "$CC_TLS_DIR" > "$W/src/connection.json" <<'PY2'
import json,sys
a,d=sys.argv[1],sys.argv[2]
r=lambda f: open(f"{d}/{f}").read()
print(json.dumps({"address":a,"dial_timeout":"10s","tls_required":True,"client_auth_required":True,
  "root_cert":r("ca.crt"),"client_cert":r("client.crt"),"client_key":r("client.key")}))
PY2
else
cat > "$W/src/connection.json" <<J
{"address": "$CC_ADDR", "dial_timeout": "10s", "tls_required": false}
J
fi
cat > "$W/metadata.json" <<J
{"path": "", "type": "ccaas", "label": "$LABEL"}
J
tar -C "$W/src" -czf "$W/code.tar.gz" connection.json
tar -C "$W" -czf "$NET/$LABEL.tgz" metadata.json code.tar.gz
peer lifecycle chaincode install "$NET/$LABEL.tgz"
PKGID=$(peer lifecycle chaincode queryinstalled | sed -n "s/^Package ID: \($LABEL:[0-9a-f]*\), Label: .*/\1/p" | head -1)
echo "$PKGID" > "$NET/package_id.$LABEL"; echo "PACKAGE_ID=$PKGID"
[ -n "${AFTER_INSTALL:-}" ] && $AFTER_INSTALL
echo "sha256 of package file: $(sha256sum "$NET/$LABEL.tgz" | cut -d' ' -f1)"
peer lifecycle chaincode approveformyorg -o 127.0.0.1:7050 --tls --cafile "$ORDERER_CA" -C mychannel -n ${CC_NAME:-ehrshare} -v 1 --sequence 1 --package-id "$PKGID" --waitForEvent
peer lifecycle chaincode checkcommitreadiness -C mychannel -n ${CC_NAME:-ehrshare} -v 1 --sequence 1
peer lifecycle chaincode commit -o 127.0.0.1:7050 --tls --cafile "$ORDERER_CA" -C mychannel -n ${CC_NAME:-ehrshare} -v 1 --sequence 1 \
  --peerAddresses 127.0.0.1:7051 --tlsRootCertFiles "$PEER_TLS/ca.crt" --waitForEvent
peer lifecycle chaincode querycommitted -C mychannel -n ${CC_NAME:-ehrshare}
