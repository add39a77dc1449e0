#!/bin/bash
# Generate crypto, system-channel genesis block (etcdraft, 1 orderer), channel tx, and peer/orderer config dirs.
set -euo pipefail
. "$(dirname "$0")/env.sh"
S=$(cd "$(dirname "$0")" && pwd)
rm -rf "$NET"; mkdir -p "$NET"
# Fabric 2.1's MSP, built with Go >= 1.15, refuses a root CA whose self-signature has a high S
# (it rewrites the certificate to low-S and new Go will not chain it to itself): draw crypto
# material until every root CA is low-S (each is with probability 1/2).
PY=${PY:-$(cd "$S/../.." && pwd)/.venv/bin/python}
for attempt in $(seq 1 300); do
  rm -rf "$CRYPTO"
  cryptogen generate --config="$S/crypto-config.yaml" --output="$CRYPTO" > /dev/null
  if "$PY" "$S/low_s_roots.py" "$CRYPTO"; then echo "crypto material: attempt $attempt"; break; fi
  [ "$attempt" = 300 ] && { echo "no low-S root CAs after 300 attempts" >&2; exit 1; }
done
mkdir -p "$NET/txcfg"; sed "s#NETDIR#$NET#g" "$S/configtx.yaml" > "$NET/txcfg/configtx.yaml"
FABRIC_CFG_PATH=$NET/txcfg configtxgen -profile OrdererGenesis -channelID system-channel -outputBlock "$NET/genesis.block"
FABRIC_CFG_PATH=$NET/txcfg configtxgen -profile OneOrgChannel -channelID mychannel -outputCreateChannelTx "$NET/mychannel.tx"
# orderer config: the module's sampleconfig, overridden by env in start-orderer.sh
mkdir -p "$NET/orderercfg"; cp "$SRC/sampleconfig/orderer.yaml" "$NET/orderercfg/"
# peer config: sampleconfig core.yaml with vm.endpoint blank and the ccaas external builder
mkdir -p "$NET/peercfg"; cp "$SRC/sampleconfig/core.yaml" "$NET/peercfg/"
python3 - "$NET/peercfg/core.yaml" "$S/builder" <<'PY'
import sys,re
p,b=sys.argv[1],sys.argv[2]
t=open(p).read()
t=t.replace("    endpoint: unix:///var/run/docker.sock","    endpoint: \"\"",1)
t=t.replace("    externalBuilders: []",f"    externalBuilders:\n        - path: {b}\n          name: ccaas-builder\n          environmentWhitelist: [HOME]",1)
open(p,"w").write(t)
PY
grep -n -A3 'externalBuilders:' "$NET/peercfg/core.yaml"; grep -n '^    endpoint:' "$NET/peercfg/core.yaml"
