#!/bin/bash
set -euo pipefail
. "$(dirname "$0")/env.sh"
P=$CRYPTO/peerOrganizations/org1.example.com/peers/peer0.org1.example.com
export FABRIC_CFG_PATH=$NET/peercfg
export FABRIC_LOGGING_SPEC=${PEER_LOGGING_SPEC:-INFO:chaincode=debug:lifecycle=debug}
export CORE_PEER_ID=peer0.org1.example.com
export CORE_PEER_ADDRESS=127.0.0.1:7051 CORE_PEER_LISTENADDRESS=127.0.0.1:7051
export CORE_PEER_CHAINCODEADDRESS=127.0.0.1:7052 CORE_PEER_CHAINCODELISTENADDRESS=127.0.0.1:7052
export CORE_PEER_GOSSIP_BOOTSTRAP=127.0.0.1:7051 CORE_PEER_GOSSIP_EXTERNALENDPOINT=127.0.0.1:7051
export CORE_PEER_LOCALMSPID=Org1MSP CORE_PEER_MSPCONFIGPATH=$P/msp
export CORE_PEER_TLS_ENABLED=true CORE_PEER_TLS_CERT_FILE=$P/tls/server.crt
export CORE_PEER_TLS_KEY_FILE=$P/tls/server.key CORE_PEER_TLS_ROOTCERT_FILE=$P/tls/ca.crt
export CORE_PEER_FILESYSTEMPATH=$NET/peer
export CORE_OPERATIONS_LISTENADDRESS=127.0.0.1:9444 CORE_METRICS_PROVIDER=disabled
export CORE_VM_ENDPOINT=
export CORE_LEDGER_STATE_STATEDATABASE=goleveldb
nohup peer node start > "$NET/peer.log" 2>&1 &
echo $! > "$NET/peer.pid"; echo "peer pid $(cat $NET/peer.pid)"
