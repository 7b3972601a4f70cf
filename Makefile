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

# `make install` layout (DESTDIR stages it elsewhere, e.g. for a package).
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
DESTDIR    ?=

# `make release`: a static binary and the files to deploy it, as a tarball
# with its sha256, in DIST. Timestamps in the tarball are the last commit's.
DIST              ?= dist
GOARCH            ?= $(shell $(GO) env GOARCH)
RELEASE            = connwarden-$(VERSION)-linux-$(GOARCH)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
RELEASE_FILES     := README.md docs/operations.md deploy/config.yaml \
                     deploy/systemd/connwarden.service deploy/grafana/connwarden.json \
                     deploy/prometheus/alerts.yaml deploy/prometheus/alerts_test.yaml \
                     $(wildcard deploy/kubernetes/*.yaml) $(wildcard rules/default/*.yaml)

.PHONY: all setup generate check-generate build run test bench fuzz lint clean install release

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
# deploy/ checks the operating files (unit, alerts, dashboard, install, release)
# and deploy/check, a module of its own, the Kubernetes manifests.
test: setup lint
	$(GO) test -race -count=1 -timeout 30m $(PKGS)
	cd deploy/check && $(GO) test -count=1 ./...

# Install the binary, the unit and, unless they exist (an upgrade keeps the
# operator's), the default config and rules. Paths in the unit and config
# follow BINDIR and SYSCONFDIR.
install: build
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/connwarden
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/connwarden
	sed -e 's|/usr/local/bin/connwarden|$(BINDIR)/connwarden|g' -e 's|/etc/connwarden/|$(SYSCONFDIR)/connwarden/|g' \
		deploy/systemd/connwarden.service > $(DESTDIR)$(UNITDIR)/connwarden.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/connwarden.service
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/connwarden/config.yaml ]; then \
		echo "keeping $(DESTDIR)$(SYSCONFDIR)/connwarden/config.yaml"; \
	else \
		sed 's|/etc/connwarden/|$(SYSCONFDIR)/connwarden/|g' deploy/config.yaml > $(DESTDIR)$(SYSCONFDIR)/connwarden/config.yaml && \
		chmod 0644 $(DESTDIR)$(SYSCONFDIR)/connwarden/config.yaml; \
	fi
	@if [ -d $(DESTDIR)$(SYSCONFDIR)/connwarden/rules ]; then \
		echo "keeping $(DESTDIR)$(SYSCONFDIR)/connwarden/rules/"; \
	else \
		install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/connwarden/rules && \
		install -m 0644 rules/default/*.yaml $(DESTDIR)$(SYSCONFDIR)/connwarden/rules/; \
	fi
	@echo "installed; then: systemctl daemon-reload && systemctl enable --now connwarden"

# A static binary (no libc: it runs on any Linux with BPF) with version and
# commit, and the files to deploy it, in DIST/RELEASE.tar.gz (+ .sha256).
release:
	rm -rf $(DIST)/$(RELEASE) $(DIST)/$(RELEASE).tar.gz $(DIST)/$(RELEASE).tar.gz.sha256
	mkdir -p $(DIST)/$(RELEASE)
	CGO_ENABLED=0 GOOS=linux GOARCH=$(GOARCH) $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' \
		-o $(DIST)/$(RELEASE)/connwarden ./cmd/connwarden
	for f in $(RELEASE_FILES); do install -D -m 0644 $$f $(DIST)/$(RELEASE)/$$f || exit 1; done
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@$(SOURCE_DATE_EPOCH) \
		-C $(DIST) -cf - $(RELEASE) | gzip -9n > $(DIST)/$(RELEASE).tar.gz
	cd $(DIST) && sha256sum $(RELEASE).tar.gz > $(RELEASE).tar.gz.sha256
	rm -rf $(DIST)/$(RELEASE)
	@cat $(DIST)/$(RELEASE).tar.gz.sha256

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
	cd deploy/check && $(GO) vet ./...

clean:
	rm -rf bin bench.json $(DIST)
