# source me. Common paths for the fabric 2.1.1 probe network.
export FAB=${FAB:-/tmp/fabric21}
export BIN=${BIN:-$FAB/bin}
export NET=${NET:-$FAB/net}
export SRC=${SRC:-$FAB/src/fabric}
export PATH=$BIN:$PATH
export CRYPTO=$NET/crypto
export ORDERER_CA=$CRYPTO/ordererOrganizations/example.com/orderers/orderer.example.com/tls/ca.crt
export PEER_TLS=$CRYPTO/peerOrganizations/org1.example.com/peers/peer0.org1.example.com/tls
# client (admin) env for peer CLI
cli_env() {
  export FABRIC_CFG_PATH=$NET/peercfg
  export CORE_PEER_LOCALMSPID=Org1MSP
  export CORE_PEER_MSPCONFIGPATH=$CRYPTO/peerOrganizations/org1.example.com/users/Admin@org1.example.com/msp
  export CORE_PEER_ADDRESS=127.0.0.1:7051
  export CORE_PEER_TLS_ENABLED=true
  export CORE_PEER_TLS_ROOTCERT_FILE=$PEER_TLS/ca.crt
}
