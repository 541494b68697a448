# flota — make targets are what CI and users run.
GO      ?= go
BIN     ?= bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
STATICCHECK_VERSION ?= v0.8.2

# Benchmark size; override with: make bench DEVICES=500 SIZE=65536
DEVICES ?= 2000
SIZE    ?= 262144

.PHONY: all build test check bench demo clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/orchestrator ./cmd/orchestrator
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/devicesim ./cmd/devicesim

test:
	$(GO) test -race -count=1 -timeout 30m ./...

check:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

demo: build
	./scripts/demo.sh

bench: build
	$(GO) build -o $(BIN)/flotabench ./cmd/flotabench
	$(BIN)/flotabench --devices $(DEVICES) --size $(SIZE)

clean:
	rm -rf $(BIN)
