#!/bin/bash
# create + join mychannel as Org1 admin
set -euo pipefail
. "$(dirname "$0")/env.sh"; cli_env
peer channel create -o 127.0.0.1:7050 -c mychannel -f "$NET/mychannel.tx" --outputBlock "$NET/mychannel.block" --tls --cafile "$ORDERER_CA"
peer channel join -b "$NET/mychannel.block"
peer channel list
