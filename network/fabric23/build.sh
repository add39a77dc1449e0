#!/bin/bash
# Build Fabric's release-2.3 branch (2.3.2) peer/orderer/configtxgen/osnadmin from the Go module proxy,
# CGO off (`make tools`). The proxy serves that branch only under a pseudo-version. Its module zip keeps
# vendor/modules.txt but none of the vendored packages (module zips drop them), so Go would try a vendor
# build and fail: vendor/ is removed and the dependencies come from the proxy (-mod=mod, go.sum checks them).
set -euo pipefail
FAB=${FAB:-/tmp/fabric23}
OUT=${OUT:-$FAB/bin}
REV=v1.4.0-rc1.0.20210722174351-9815a7a8f0f7 # release-2.3 @ 9815a7a8f0f7 (Makefile BASE_VERSION 2.3.2)
go mod download -json "github.com/hyperledger/fabric@$REV" > "$FAB/fabric-dl.json"
MODDIR=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Dir"])' "$FAB/fabric-dl.json")
rm -rf "$FAB/src/fabric"; mkdir -p "$FAB/src" "$OUT"
cp -r "$MODDIR" "$FAB/src/fabric"; chmod -R u+w "$FAB/src/fabric"
rm -rf "$FAB/src/fabric/vendor"
cd "$FAB/src/fabric"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
  -ldflags "-X github.com/hyperledger/fabric/common/metadata.Version=2.3.2 -X github.com/hyperledger/fabric/common/metadata.CommitSHA=9815a7a8f0f7" \
  -o "$OUT/" ./cmd/peer ./cmd/orderer ./cmd/configtxgen ./cmd/osnadmin
"$OUT/peer" version
