#!/bin/sh
# The programs `make tools` / `make test` need beyond Python and make, checked before anything is
# built, so a fresh machine stops here with one message rather than deep inside a build or a test.
#   ip     iproute2               the network-namespace tests (tests/netns)
#   mvn    maven                  the HAPI FHIR client program (make hapi-client)
#   javac  default-jdk-headless   idem (Maven compiles Java; a JRE alone is not enough)
#   node   nodejs                 Hyperledger Caliper (make caliper)
#   npm    npm                    idem
#   go     golang-go              Kubo and Fabric 2.3 (make tools); 1.21 or newer: the Kubo build
#                                 pins its own toolchain (GOTOOLCHAIN), which older go commands ignore
# `--check` only reports. Otherwise, run as root where apt-get is available (Debian), the missing
# Debian packages are installed (apt-get install -y --no-install-recommends); elsewhere it stops
# naming them. Exit status 0 when everything is there, else 1.
set -u

MIN_GO_MINOR=21
mode=install
[ "${1:-}" = "--check" ] && mode=check

missing_packages() {
    out=""
    command -v ip >/dev/null 2>&1 || out="$out iproute2"
    command -v mvn >/dev/null 2>&1 || out="$out maven"
    command -v javac >/dev/null 2>&1 || out="$out default-jdk-headless"
    command -v node >/dev/null 2>&1 || out="$out nodejs"
    command -v npm >/dev/null 2>&1 || out="$out npm"
    command -v go >/dev/null 2>&1 || out="$out golang-go"
    echo "${out# }"
}

# "go version go1.19.8 linux/amd64" → 19; empty when unreadable.
go_minor() {
    v=$(go version 2>/dev/null) || return 0
    v=${v#go version go1.}
    echo "${v%%[!0-9]*}"
}

missing=$(missing_packages)
if [ -n "$missing" ] && [ "$mode" = install ] && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
    echo "==> installing the Debian packages make tools needs: $missing"
    export DEBIAN_FRONTEND=noninteractive
    # $missing unquoted on purpose: one word per package.
    # shellcheck disable=SC2086
    apt-get update -q && apt-get install -y -q --no-install-recommends $missing
    missing=$(missing_packages)
fi

if [ -n "$missing" ]; then
    echo "make tools needs these Debian packages, not installed here: $missing" >&2
    echo "  install them (as root: apt-get install -y --no-install-recommends $missing)," \
        "or run 'make tools' as root on Debian to have them installed, then run it again" >&2
    exit 1
fi

minor=$(go_minor)
if [ -z "$minor" ] || [ "$minor" -lt "$MIN_GO_MINOR" ]; then
    echo "make tools needs Go 1.$MIN_GO_MINOR or newer; '$(command -v go)' is" \
        "'$(go version 2>&1)'" >&2
    echo "  (Debian 12's golang-go is 1.19: install Go from https://go.dev/dl/ or a newer" \
        "golang-1.xx package from bookworm-backports, put it first on PATH, then run it again)" >&2
    exit 1
fi
echo "==> make tools prerequisites: ip, mvn, javac, node, npm, go 1.$minor"
