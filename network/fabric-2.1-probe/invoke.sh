#!/bin/bash
# Drive the contract through the peer: a query before, RegisterOrgCA as Org1 admin, a query after, and an expected refusal.
set -uo pipefail
. "$(dirname "$0")/env.sh"; cli_env
CA=$CRYPTO/peerOrganizations/org1.example.com/ca/ca.org1.example.com-cert.pem
ARGS=$(python3 -c 'import json,sys; print(json.dumps({"function":"RegisterOrgCA","Args":[open(sys.argv[1]).read()]}))' "$CA")
echo "== query GetOrgCA (before)"; peer chaincode query -C mychannel -n ${CC_NAME:-ehrshare} -c '{"Args":["GetOrgCA","Org1MSP"]}'
echo "== invoke RegisterOrgCA"; peer chaincode invoke -o 127.0.0.1:7050 --tls --cafile "$ORDERER_CA" -C mychannel -n ${CC_NAME:-ehrshare} \
  --peerAddresses 127.0.0.1:7051 --tlsRootCertFiles "$PEER_TLS/ca.crt" --waitForEvent -c "$ARGS"
echo "== query GetOrgCA (after)"; peer chaincode query -C mychannel -n ${CC_NAME:-ehrshare} -c '{"Args":["GetOrgCA","Org1MSP"]}'
echo "== invoke RegisterOrgCA again (expect refusal)"; peer chaincode invoke -o 127.0.0.1:7050 --tls --cafile "$ORDERER_CA" -C mychannel -n ${CC_NAME:-ehrshare} \
  --peerAddresses 127.0.0.1:7051 --tlsRootCertFiles "$PEER_TLS/ca.crt" --waitForEvent -c "$ARGS"
echo "== invoke RegisterIdentity as admin"; peer chaincode invoke -o 127.0.0.1:7050 --tls --cafile "$ORDERER_CA" -C mychannel -n ${CC_NAME:-ehrshare} \
  --peerAddresses 127.0.0.1:7051 --tlsRootCertFiles "$PEER_TLS/ca.crt" --waitForEvent -c '{"Args":["RegisterIdentity"]}'
echo "== query GetIdentity"; peer chaincode query -C mychannel -n ${CC_NAME:-ehrshare} -c '{"Args":["GetIdentity","Org1MSP/Admin@org1.example.com"]}'
