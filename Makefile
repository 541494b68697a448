# flota — make targets are what CI and users run.
GO      ?= go
BIN     ?= bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
STATICCHECK_VERSION ?= v0.8.2
# The Litestream the standby test runs (docs/DEPLOY.md); keep in step with
# LitestreamVersion in cmd/orchestrator/standby_e2e_test.go.
LITESTREAM_VERSION ?= v0.3.13

# Benchmark size; override with: make bench DEVICES=10000 SIZE=262144 IN_FLIGHT=500 LATENCY=20ms
DEVICES   ?= 2000
SIZE      ?= 262144
IN_FLIGHT ?= 256
LATENCY   ?= 0s
# Seconds the C agent's fuzz target runs in make check.
FUZZ_TIME ?= 20

.PHONY: all build test deps check bench demo clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/orchestrator ./cmd/orchestrator
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/devicesim ./cmd/devicesim
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/flota-agent ./cmd/flota-agent

# The end-to-end tests build the orchestrator and devicesim without -race
# while they run, inside the test timeout: build them first, so that on
# a fresh machine the tests only link them (a cold build takes minutes).
# Litestream is built from the Go module proxy into bin/ (a minute on a
# fresh machine, seconds after); without it the standby test skips, saying so.
test:
	./scripts/deps.sh
	$(GO) build ./...
	$(MAKE) -C agents/c test
	GOBIN=$(abspath $(BIN)) $(GO) install github.com/benbjohnson/litestream/cmd/litestream@$(LITESTREAM_VERSION) || \
		echo "litestream $(LITESTREAM_VERSION) could not be built: the standby test will skip" >&2
	$(GO) test -race -count=1 -timeout 20m ./...
	cd third_party/mochi && $(GO) test -race -count=1 -timeout 5m ./...

# Install (as root) what the tests need, or print the one command to run.
deps:
	./scripts/deps.sh

check:
	$(GO) vet ./...
	cd third_party/mochi && $(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	$(MAKE) -C agents/c fuzz FUZZ_TIME=$(FUZZ_TIME)

demo: build
	./scripts/demo.sh

bench: build
	$(GO) build -o $(BIN)/flotabench ./cmd/flotabench
	$(BIN)/flotabench --devices $(DEVICES) --size $(SIZE) --max-in-flight $(IN_FLIGHT) --latency $(LATENCY)

clean:
	rm -rf $(BIN)
	$(MAKE) -C agents/c clean
