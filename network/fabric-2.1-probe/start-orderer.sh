#!/bin/bash
set -euo pipefail
. "$(dirname "$0")/env.sh"
O=$CRYPTO/ordererOrganizations/example.com/orderers/orderer.example.com
export FABRIC_CFG_PATH=$NET/orderercfg
export FABRIC_LOGGING_SPEC=INFO
export ORDERER_GENERAL_LISTENADDRESS=127.0.0.1 ORDERER_GENERAL_LISTENPORT=7050
export ORDERER_GENERAL_LOCALMSPID=OrdererMSP ORDERER_GENERAL_LOCALMSPDIR=$O/msp
export ORDERER_GENERAL_TLS_ENABLED=true ORDERER_GENERAL_TLS_PRIVATEKEY=$O/tls/server.key
export ORDERER_GENERAL_TLS_CERTIFICATE=$O/tls/server.crt ORDERER_GENERAL_TLS_ROOTCAS=[$O/tls/ca.crt]
export ORDERER_GENERAL_CLUSTER_CLIENTCERTIFICATE=$O/tls/server.crt ORDERER_GENERAL_CLUSTER_CLIENTPRIVATEKEY=$O/tls/server.key
export ORDERER_GENERAL_CLUSTER_ROOTCAS=[$O/tls/ca.crt]
export ORDERER_GENERAL_BOOTSTRAPMETHOD=file ORDERER_GENERAL_BOOTSTRAPFILE=$NET/genesis.block
export ORDERER_FILELEDGER_LOCATION=$NET/orderer/ledger
export ORDERER_CONSENSUS_WALDIR=$NET/orderer/etcdraft/wal ORDERER_CONSENSUS_SNAPDIR=$NET/orderer/etcdraft/snap
export ORDERER_OPERATIONS_LISTENADDRESS=127.0.0.1:9443 ORDERER_METRICS_PROVIDER=disabled
nohup orderer > "$NET/orderer.log" 2>&1 &
echo $! > "$NET/orderer.pid"; echo "orderer pid $(cat $NET/orderer.pid)"
