#!/bin/bash
# Build Fabric v2.1.1 peer/orderer/configtxgen from the Go module proxy, CGO off (`make tools`).
# Fabric 2.1 has no go.mod (dep: Gopkg.lock) and the module zip has no vendor/, so we add a go.mod whose
# pseudo-versions correspond to Gopkg.lock's revisions (the proxy here refuses bare-commit queries).
# Without an MSP fix (README.md), a root CA with a high-S self-signature makes MSP setup fail under
# Go >= 1.15; ehrshare's own CAs are made low-S, so the network runs without it.
set -euo pipefail
S=$(cd "$(dirname "$0")" && pwd)
FAB=${FAB:-/tmp/fabric21}
OUT=${OUT:-$FAB/bin}
go mod download -json github.com/hyperledger/fabric@v2.1.1 > "$FAB/fabric-dl.json"
MODDIR=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Dir"])' "$FAB/fabric-dl.json")
rm -rf "$FAB/src/fabric"; mkdir -p "$FAB/src" "$OUT"
cp -r "$MODDIR" "$FAB/src/fabric"; chmod -R u+w "$FAB/src/fabric"
cp "$S/fabric-v2.1.1.go.mod" "$FAB/src/fabric/go.mod"
cd "$FAB/src/fabric"
# The MSP fix is Fabric's own code (a backport), so it is not part of this repository: put it in
# $MSP_PATCH to apply it, or see README.md for the way around it without touching Fabric.
if [ -n "${MSP_PATCH:-}" ]; then patch -p1 < "$MSP_PATCH"; fi
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
  -ldflags "-X github.com/hyperledger/fabric/common/metadata.Version=2.1.1 -X github.com/hyperledger/fabric/common/metadata.CommitSHA=v2.1.1-modproxy" \
  -o "$OUT/" ./cmd/peer ./cmd/orderer ./cmd/configtxgen
"$OUT/peer" version
