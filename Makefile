# The two commands: `make demo` and `make test`. Both create the virtual
# environment and install everything they need from the package registries.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FABRIC23 := network/build/fabric23/bin/peer
HAPI     := network/build/hapi/hapi-story.jar

.PHONY: demo test lint unit venv clean bench-crypto bench-dkg bench-consensus tools prereqs check-tools hapi-client network-up network-down caliper

venv: $(STAMP)

# Not --quiet: on a fresh machine the install takes about two minutes, and pip's own lines
# (Collecting …, Downloading … with a progress bar on a terminal, Installing …) show it is working.
# Once the stamp is newer than pyproject.toml none of this runs, so `make test` stays quiet.
$(STAMP): pyproject.toml
	@echo "==> creating the virtual environment $(VENV)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> upgrading pip"
	$(BIN)/python -m pip install --progress-bar on --upgrade pip
	@echo "==> installing ehrshare and its dependencies (about 2 minutes the first time)"
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]'
	touch $(STAMP)
	@echo "==> installed into $(VENV)"

## make demo: install and run the end-to-end demo on the embedded default backend
demo: $(STAMP)
	@echo "==> running the demo"
	$(BIN)/ehrshare demo

## make test: install, lint, type-check and run every test
test: $(STAMP) lint tools caliper
	$(BIN)/python -m pytest

## make tools: build the pinned Kubo (IPFS) into network/build/bin and Fabric 2.3 into
## network/build/fabric23/bin with the Go module proxy, and the HAPI FHIR client test program
## (first run a few minutes, then a no-op). It first checks the programs it needs (ip, mvn,
## javac, node, npm, go ≥ 1.21; network/prereqs.sh) and, as root on Debian, installs the
## missing packages with apt-get; elsewhere it stops naming them.
tools: prereqs $(STAMP) $(FABRIC23) $(HAPI)
	$(BIN)/python -m ehrshare.network.kubo install

## make prereqs: check, and as root on Debian install, what make tools and make test need;
## make check-tools: only check (installs nothing; exit 1 naming the missing packages)
prereqs:
	@$(SHELL) network/prereqs.sh

check-tools:
	@$(SHELL) network/prereqs.sh --check

## make hapi-client: the HAPI FHIR (Java) client program tests/fhirapi/test_fhir_hapi_client.py
## runs, with its libraries from Maven Central, into network/build/hapi (about a minute the
## first time, then a no-op)
hapi-client: $(HAPI)

$(HAPI): tests/fhirapi/hapi/pom.xml $(wildcard tests/fhirapi/hapi/src/main/java/org/ehrshare/tests/*.java) | prereqs
	mvn -B -q -f tests/fhirapi/hapi/pom.xml package

## Fabric 2.3.2 (release-2.3 branch; the newest Fabric the Go module proxy serves here, with
## channel participation; the pinned 3.1 is refused): peer, orderer, configtxgen, osnadmin into
## network/build/fabric23 (a few minutes, then a no-op)
$(FABRIC23): network/fabric23/build.sh | prereqs
	mkdir -p network/build/fabric23
	FAB=$(CURDIR)/network/build/fabric23 bash network/fabric23/build.sh

## make caliper: install Hyperledger Caliper 0.6 and its Fabric 2.2 SDK binding (fabric-network)
## exactly as pinned in bench/caliper/package-lock.json (npm ci, about two minutes the first
## time); `ehrshare bench fabric --caliper` and tests/fabric/test_caliper.py use it (make test
## runs it, so CI does: its Caliper test takes about a minute).
CALIPER := bench/caliper/node_modules/.bin/caliper
caliper: $(CALIPER)

$(CALIPER): bench/caliper/package-lock.json | prereqs
	cd bench/caliper && npm ci --no-audit --no-fund
	touch $(CALIPER)

## make network-up PROFILE=<consortium dir>: start its KGC nodes and proxies in the background
## (a consortium made with `ehrshare consortium init DIR --services processes`); network-down stops them
PROFILE ?= consortium
network-up: $(STAMP)
	$(BIN)/ehrshare network up --profile $(PROFILE)

network-down: $(STAMP)
	$(BIN)/ehrshare network down --profile $(PROFILE)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not fabric and not ipfs"

bench-crypto: $(STAMP)
	$(BIN)/ehrshare bench crypto --json

bench-dkg: $(STAMP)
	$(BIN)/ehrshare bench dkg --json

bench-consensus: $(STAMP)
	$(BIN)/ehrshare bench consensus --safety-sweep --runs 200 --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
