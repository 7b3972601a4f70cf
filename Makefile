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
# the race detector. The bpf tests also check the committed objects match the C.
test: setup lint
	$(GO) test -race -count=1 -timeout 30m $(PKGS)

# Every benchmark of the project, then bench.json (issue #5's figures, the
# medians of BENCH_COUNT runs) and a table of them against their targets, by
# test/benchreport. Packages run one at a time, so that no benchmark of ours
# competes with another. The agent benchmarks (test/, whole experiments of
# seconds each) run once per run (-benchtime 1x; start-up: 5 starts per run).
# The raw go test -json stream is kept in bin/bench.jsonl. Fails when a
# benchmark failed; a missed target is reported, not an error.
BENCH_COUNT ?= 5
bench: setup
	@mkdir -p bin
	$(GO) build -o bin/benchreport ./test/benchreport
	{ $(GO) test -json -p 1 -run '^$$' -bench . -skip '^BenchmarkAgent' -benchmem -count $(BENCH_COUNT) -timeout 60m $(PKGS); \
	  $(GO) test -json -run '^$$' -bench '^BenchmarkAgentStartup$$' -benchtime 5x -count $(BENCH_COUNT) -timeout 30m ./test/; \
	  $(GO) test -json -run '^$$' -bench '^BenchmarkAgent(DetectToBlock|RSS100kKeys)$$' -benchtime 1x -count $(BENCH_COUNT) -timeout 30m ./test/; \
	} 2>&1 | bin/benchreport -progress -raw bin/bench.jsonl -o bench.json

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

clean:
	rm -rf bin bench.json
