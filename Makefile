# connwarden build, test and benchmark entry points. See README.md.

GO        ?= go
BIN       := bin/connwarden
PKGS      := ./...
FUZZTIME  ?= 30s
# Arguments for `make run`, e.g. make run ARGS="-r ./myrules"
ARGS      ?=

VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -X github.com/connwarden/connwarden/cmd/connwarden/internal/version.Version=$(VERSION) \
             -X github.com/connwarden/connwarden/cmd/connwarden/internal/version.Commit=$(COMMIT)

.PHONY: all setup generate check-generate build run test bench fuzz lint clean

all: build

# Host tools (clang, libbpf headers, bpftool, iproute2, promtool) and bpffs/tracefs.
setup:
	@scripts/setup-host.sh

# Rebuild the BPF objects and their Go bindings from bpf/*.bpf.c (needs clang).
generate: setup
	$(GO) generate ./bpf/...

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/connwarden

# Build and run the agent on its embedded default rules.
run: setup build
	$(BIN) run $(ARGS)

# The whole suite: vet, formatting, then every test (kernel tests included) with
# the race detector. The bpf tests also check the committed objects match the C;
# deploy/check, a module of its own, checks the Kubernetes manifests.
test: setup lint
	$(GO) test -race -count=1 -timeout 30m $(PKGS)
	cd deploy/check && $(GO) test -count=1 ./...

bench: setup
	$(GO) test -run '^$$' -bench . -benchmem -count 5 -timeout 30m $(PKGS)

# Run every fuzz target for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null; git ls-files -o --exclude-standard '*.go' 2>/dev/null)); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	cd deploy/check && $(GO) vet ./...

clean:
	rm -rf bin bench.json
